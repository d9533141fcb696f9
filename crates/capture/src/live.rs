//! Live capture into the lookback: one [`CaptureSource`] and OS thread per interface.
//!
//! Sources are opened on the caller's thread so a bad interface is an immediate, clear
//! error. The libpcap source hands packets over a ring block at a time (TPACKET_V3), one
//! wakeup per block or per `timeout_ms`, not one per packet. Sampled packets are batched and
//! inserted under one lock per batch ([`FLUSH_EVERY`] or [`BATCH_PACKETS`]). So a packet
//! reaches the lookback at most about [`VISIBILITY_DELAY`] after it was on the wire; queries
//! whose window ends later than that wait for it. Kernel drops are read once a second into
//! the lookback's counters.
//!
//! **One kernel copy per packet.** While a live capture ([`crate::session`]) runs on an
//! interface, it can feed the lookback itself ([`Feed::claim`] gives it a [`Feeder`]): the
//! lookback's thread closes its own handle until the capture hands back, so the kernel copies
//! each packet into one ring instead of two. The hand-overs are exact by timestamp: each side
//! inserts only packets stamped after the last one the other read. The capture then reads
//! every packet (its filter runs in user space) and the lookback samples them as before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::CaptureError;
use crate::lookback::{Lookback, Sampler};
use crate::source::{CaptureSource, Next, OpenOptions, SourceFactory, Waker};

/// Which interfaces feed the lookback and how their sources are opened. The snap length is
/// not here: it is the lookback's own ([`crate::LookbackConfig::snaplen`]).
#[derive(Clone, Debug)]
pub struct LookbackCaptureConfig {
    /// Interface names, one source and capture thread each. If any fails to open, nothing is
    /// started.
    pub interfaces: Vec<String>,
    /// Kernel buffer per interface, bytes.
    pub buffer_size: i32,
    /// Read timeout, ms: the ring's block timeout, and how long waits last while a source is
    /// attentive ([`OpenOptions::timeout_ms`]).
    pub timeout_ms: i32,
    /// How long a quiet source's waits last otherwise, ms ([`OpenOptions::idle_ms`]).
    pub idle_ms: u32,
    /// Open the interfaces in promiscuous mode.
    pub promisc: bool,
}

impl Default for LookbackCaptureConfig {
    fn default() -> Self {
        Self {
            interfaces: vec!["lo".into()],
            buffer_size: 4 << 20,
            timeout_ms: FEED_TIMEOUT_MS,
            idle_ms: crate::source::IDLE_MS,
            promisc: true,
        }
    }
}

/// Running capture threads; stopped on drop.
pub struct LookbackCapture {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// One per interface. Its waker is the thread's current source's: a source can block
    /// until a packet arrives (libpcap, even with a read timeout), so a stop on a quiet
    /// interface must wake it, not wait for the next packet.
    feeds: Vec<Arc<Feed>>,
}

type Shared = Arc<Mutex<Lookback>>;

/// Sampled packets are inserted at least this often ...
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// ... or when this many are waiting.
pub const BATCH_PACKETS: usize = 512;
/// Upper bound on the time from the wire to the lookback: the ring block timeout (default
/// `timeout_ms`, [`FEED_TIMEOUT_MS`]), one flush interval, and a wide margin for scheduling.
/// A query waits for it only when the lookback cannot say sooner that its window is in
/// ([`Lookback::settled_ns`]: each feeder marks it when its source runs dry).
pub const VISIBILITY_DELAY: Duration = Duration::from_millis(150);
/// The read timeout of a source that feeds the lookback (its ring blocks retire this often).
pub const FEED_TIMEOUT_MS: i32 = 20;
/// How long a capture handing the lookback back waits for its own handle to be open again.
const HAND_BACK_WAIT: Duration = Duration::from_secs(3);
/// Packets seen during a hand-over whose side is not known yet (a few ms of traffic).
const HAND_OVER_MAX: usize = 1 << 20;

/// How long after a moment a ring has surely handed over every packet from before it, when
/// no later packet shows it sooner (a quiet interface): a partly filled block is retired
/// after one read timeout, but the reading thread may be starved of CPU for a while.
fn settle_ns() -> u64 {
    1_000_000_000
}

/// After a read of `source` that began at `began_ns` found it dry: every packet stamped
/// before the moment returned has been read, for a hand-over. The clock is read before the
/// read (a thread preempted after it would otherwise claim too much), and the margin is twice
/// the source's lag and at least 40 ms: the kernel's block timer runs in whole jiffies and not
/// in step with the read's timeout, and a packet lost or doubled at a hand-over costs more
/// than those milliseconds. A source without lag (no ring: a generated one makes each packet
/// when it reads it; a libpcap source always has some) has given everything stamped before
/// the read began.
fn surely_read_ns(began_ns: u64, source: &dyn CaptureSource) -> u64 {
    let lag = source.lag();
    let margin = if lag.is_zero() { Duration::ZERO } else { (2 * lag).max(Duration::from_millis(40)) };
    began_ns.saturating_sub(margin.as_nanos() as u64)
}

fn lock(lookback: &Shared) -> std::sync::MutexGuard<'_, Lookback> {
    edgecap_common::lock(lookback)
}

impl std::fmt::Debug for LookbackCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookbackCapture").field("threads", &self.threads.len()).finish_non_exhaustive()
    }
}

/// Who feeds the lookback from one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FeedState {
    /// The lookback's own handle.
    Own,
    /// A capture asked to take over at `at_ns`, its ring open from before then; the
    /// lookback's thread lets go once its own ring has given it what came before.
    Asked { at_ns: u64 },
    /// A capture feeds it, from packets stamped after `after_ns` (the last its thread read).
    Lent { after_ns: u64 },
    /// The capture is ending: the lookback's thread is to open its handle again ...
    Returning,
    /// ... and has, at `at_ns`, holding its packets until the capture says where it stopped
    /// (`Given`). The capture reads on until its own ring has given it what came before.
    Reopened { at_ns: u64 },
    /// The capture has given the feed back, having read up to `after_ns`; the lookback's
    /// thread takes it (then `Own`). No capture can claim it meanwhile.
    Given { after_ns: u64 },
    /// The lookback's thread has ended: nothing can take over.
    Closed,
}

/// The lookback's feed from one interface: its own thread and handle, or a live capture on
/// the same interface ([`Feed::claim`]).
pub struct Feed {
    iface: String,
    index: u16,
    lookback: Shared,
    state: Mutex<FeedState>,
    changed: Condvar,
    /// The lookback thread's current source, registered with the lookback: its waker wakes
    /// it out of a blocking read, here and for the lookback's queries. `None` while a capture
    /// feeds the lookback (the capture registers its own source) and once the thread ended.
    own: Mutex<Option<Listening>>,
    /// Set while a capture asks to take over, so the lookback's thread checks at every packet.
    asked: AtomicBool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("iface", &self.iface).field("state", &self.state()).finish_non_exhaustive()
    }
}

impl Feed {
    fn state(&self) -> FeedState {
        *edgecap_common::lock(&self.state)
    }

    fn set(&self, state: FeedState) {
        *edgecap_common::lock(&self.state) = state;
        self.changed.notify_all();
    }

    fn wake(&self) {
        if let Some(own) = edgecap_common::lock(&self.own).as_ref() {
            own.waker.wake();
        }
    }

    /// Registers the lookback thread's current source (`None`: it has none now).
    fn set_own(&self, source: Option<&dyn CaptureSource>) {
        let new = source.map(|s| Listening::new(&self.lookback, s.waker()));
        let old = std::mem::replace(&mut *edgecap_common::lock(&self.own), new);
        // (Unregistered outside this lock: Listening's drop takes the lookback's.)
        drop(old);
    }

    /// Moves from a state `from` accepts to `to`; false (and nothing changed) otherwise.
    fn transition(&self, from: impl Fn(FeedState) -> bool, to: FeedState) -> bool {
        let mut state = edgecap_common::lock(&self.state);
        if !from(*state) {
            return false;
        }
        *state = to;
        drop(state);
        self.changed.notify_all();
        true
    }

    /// Waits until `done(state)` or `give_up`, looking again at each change of state and at
    /// [`Feed::notify_stop`] (a lent lookback waits out a whole capture here: no polling).
    fn wait_until(&self, done: impl Fn(FeedState) -> bool, give_up: &dyn Fn() -> bool) -> FeedState {
        let mut state = edgecap_common::lock(&self.state);
        while !done(*state) && !give_up() {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        *state
    }

    /// Wakes the waits of [`Feed::wait_until`] after their `give_up` has become true: under
    /// the state's lock, so that a wait between its check and its sleep cannot miss it.
    fn notify_stop(&self) {
        let _state = edgecap_common::lock(&self.state);
        self.changed.notify_all();
    }

    /// The interface this feed is for.
    pub fn interface(&self) -> &str {
        &self.iface
    }

    /// Whether [`Feed::claim`] would succeed now (no capture feeds it, its thread runs).
    pub fn available(&self) -> bool {
        matches!(self.state(), FeedState::Own)
    }

    /// Bytes the lookback keeps of each packet: a capture that keeps fewer cannot feed it.
    pub fn snaplen(&self) -> usize {
        lock(&self.lookback).config().snaplen as usize
    }

    /// Takes over feeding the lookback, if its own thread feeds it now (not another capture).
    /// The capture then hands every packet it reads to the [`Feeder`], before its own filter,
    /// and [`Feeder::hand_back`] when it ends.
    pub fn claim(self: &Arc<Self>) -> Option<Feeder> {
        self.asked.store(true, Ordering::Release);
        if !self.transition(|s| matches!(s, FeedState::Own), FeedState::Asked { at_ns: crate::now_ns() }) {
            self.asked.store(false, Ordering::Release);
            return None;
        }
        self.wake();
        let (sample_rate, snaplen) = {
            let l = lock(&self.lookback);
            (l.config().sample_rate, l.config().snaplen as usize)
        };
        Some(Feeder {
            feed: self.clone(),
            sampler: Sampler::new(sample_rate),
            snaplen,
            batch: Batch::default(),
            after_ns: None,
            early_seen: Vec::new(),
            last_seen_ns: 0,
            last_flush: Instant::now(),
            kernel_drops: 0,
            returned: false,
            listening: None,
        })
    }
}

/// A source's waker, registered with the lookback while the source feeds it
/// ([`Lookback::wake_sources`]); removed when dropped.
struct Listening {
    lookback: Shared,
    id: u64,
    waker: Waker,
}

impl Listening {
    fn new(lookback: &Shared, waker: Waker) -> Self {
        let id = lock(lookback).add_waker(waker.clone());
        Self { lookback: lookback.clone(), id, waker }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        lock(&self.lookback).remove_waker(self.id);
    }
}

/// A live capture's side of a [`Feed`] it claimed: samples and inserts what the capture reads.
/// Dropped without [`Feeder::hand_back`], it gives the feed back at once (the lookback's own
/// handle then misses the moment it takes to open).
pub struct Feeder {
    feed: Arc<Feed>,
    sampler: Sampler,
    snaplen: usize,
    batch: Batch,
    /// Set once the lookback's thread let go: only packets stamped after it are inserted.
    after_ns: Option<u64>,
    /// Until then, the timestamps of the packets seen (to count only those after it).
    early_seen: Vec<u64>,
    last_seen_ns: u64,
    last_flush: Instant,
    kernel_drops: u64,
    returned: bool,
    /// The capture's source, registered with the lookback ([`Feeder::listen`]).
    listening: Option<Listening>,
}

impl std::fmt::Debug for Feeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeder").field("iface", &self.feed.iface).finish_non_exhaustive()
    }
}

impl Feeder {
    /// The capture's source, for the lookback's queries to wake (see
    /// [`Lookback::wake_sources`]) while this capture feeds it.
    pub fn listen(&mut self, waker: Waker) {
        self.listening = Some(Listening::new(&self.feed.lookback, waker));
    }

    /// One packet the capture read (every one, before its filter).
    pub fn packet(&mut self, ts_ns: u64, orig_len: u32, data: &[u8]) {
        self.last_seen_ns = ts_ns;
        match self.after_ns {
            Some(after) if ts_ns <= after => return,
            Some(_) => self.batch.seen += 1,
            None if self.early_seen.len() < HAND_OVER_MAX => self.early_seen.push(ts_ns),
            None => return,
        }
        if self.sampler.sample() {
            self.batch.push(ts_ns, orig_len, &data[..data.len().min(self.snaplen)]);
        }
        if self.batch.packets.len() >= BATCH_PACKETS {
            self.flush();
        }
    }

    /// Call often (every few dozen packets, and when a read times out): learns when the
    /// lookback's thread let go, and inserts what is batched every [`FLUSH_EVERY`].
    pub fn tick(&mut self) {
        if self.after_ns.is_none()
            && let FeedState::Lent { after_ns } = self.feed.state()
        {
            self.adopt(after_ns);
        }
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush();
        }
    }

    /// The lookback's thread let go after reading up to `after_ns`: insert from there.
    fn adopt(&mut self, after_ns: u64) {
        self.after_ns = Some(after_ns);
        self.batch.seen += self.early_seen.iter().filter(|&&t| t > after_ns).count() as u64;
        self.early_seen = Vec::new();
        self.batch.retain_after(after_ns);
    }

    /// The capture's source had nothing more to give: everything it read is inserted, and
    /// every packet before `settled_ns` was read (see [`CaptureSource::lag`]).
    pub fn quiet(&mut self, settled_ns: u64) {
        if self.after_ns.is_some() {
            self.last_flush = Instant::now();
            self.batch.flush(&self.feed.lookback, self.feed.index, Some(settled_ns));
        }
    }

    /// The capture's kernel drops so far (its source's counter), counted into the lookback's.
    pub fn kernel_dropped(&mut self, total: u64) {
        let new = total.saturating_sub(self.kernel_drops);
        self.kernel_drops = total;
        if new > 0 {
            lock(&self.feed.lookback).count_kernel_dropped(self.feed.index, new);
        }
    }

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        if self.after_ns.is_some() {
            self.batch.flush(&self.feed.lookback, self.feed.index, None);
        }
    }

    /// Gives the feed back when the capture ends: reads `source` on (for the lookback only)
    /// until the lookback's own handle is open again and this ring has handed over every
    /// packet from before that (it read a later packet; on a quiet interface, after a second),
    /// so nothing is missed in between; then tells it where this side stopped.
    ///
    /// Exact when packets are delivered one after another (each socket stamps a packet
    /// before the next packet is delivered); with several receive queues delivering at once,
    /// a packet or two around the hand-over may be counted by both sides or by neither.
    pub fn hand_back(mut self, source: &mut dyn CaptureSource) {
        {
            let feed = self.feed.clone();
            let mut state = edgecap_common::lock(&feed.state);
            match *state {
                // Lent: learn where the lookback's thread stopped (if no tick did yet), then
                // ask it to open its handle again.
                FeedState::Lent { after_ns } => {
                    if self.after_ns.is_none() {
                        self.adopt(after_ns);
                    }
                    *state = FeedState::Returning;
                }
                // Not taken over yet (withdrawn), or the thread is gone.
                _ => {
                    drop(state);
                    self.give_back();
                    return;
                }
            }
        }
        self.feed.changed.notify_all();
        // Short waits on a quiet interface: the hand-over ends on a read that times out.
        source.attend(HAND_BACK_WAIT);
        let end = Instant::now() + HAND_BACK_WAIT;
        let settle = settle_ns();
        // Every packet before this has been read: a read found the ring dry.
        let mut settled_ns = 0u64;
        let mut n = 0u32;
        while Instant::now() < end {
            if n.is_multiple_of(64) {
                self.tick();
                match self.feed.state() {
                    FeedState::Reopened { at_ns }
                        if self.last_seen_ns.max(settled_ns) >= at_ns
                            || crate::now_ns() > at_ns.saturating_add(settle) =>
                    {
                        break;
                    }
                    FeedState::Closed => break,
                    _ => {}
                }
            }
            n = n.wrapping_add(1);
            let began_ns = crate::now_ns();
            match source.next() {
                Ok(Next::Packet(p)) => self.packet(p.ts_ns, p.orig_len, p.data),
                Ok(Next::Timeout) => {
                    settled_ns = settled_ns.max(surely_read_ns(began_ns, source));
                    n = 0;
                }
                Ok(Next::Woken) => n = 0,
                Err(_) => break,
            }
        }
        self.give_back();
    }

    fn give_back(&mut self) {
        if self.returned {
            return;
        }
        self.returned = true;
        self.listening = None;
        self.feed.asked.store(false, Ordering::Release);
        {
            let feed = self.feed.clone();
            let mut state = edgecap_common::lock(&feed.state);
            match *state {
                // The lookback's thread never let go: it read everything; withdraw the claim.
                FeedState::Asked { .. } => {
                    *state = FeedState::Own;
                    drop(state);
                    self.feed.changed.notify_all();
                    return;
                }
                FeedState::Lent { after_ns } if self.after_ns.is_none() => self.adopt(after_ns),
                _ => {}
            }
        }
        // (While the state is Lent, Returning or Reopened, only this side changes it.)
        self.flush();
        let mut state = edgecap_common::lock(&self.feed.state);
        if *state != FeedState::Closed {
            *state = FeedState::Given { after_ns: self.last_seen_ns };
        }
        drop(state);
        self.feed.changed.notify_all();
        // The lookback's thread may be waiting on its reopened, quiet source: it learns now.
        self.feed.wake();
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl LookbackCapture {
    /// Opens every interface with `sources` and starts one thread per interface.
    pub fn start(
        config: &LookbackCaptureConfig,
        sources: Arc<dyn SourceFactory>,
        lookback: Shared,
    ) -> Result<Self, CaptureError> {
        let snaplen = lock(&lookback).config().snaplen;
        let options = OpenOptions {
            snaplen,
            buffer_size: config.buffer_size.max(0) as u32,
            promisc: config.promisc,
            timeout_ms: config.timeout_ms,
            idle_ms: config.idle_ms,
        };
        let mut opened = Vec::new();
        for iface in &config.interfaces {
            opened.push((iface.clone(), sources.open(iface, &options)?));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut feeds = Vec::new();
        for (iface, source) in opened {
            let index = lock(&lookback).add_interface(&iface, source.linktype());
            let feed = Arc::new(Feed {
                iface: iface.clone(),
                index,
                lookback: lookback.clone(),
                state: Mutex::new(FeedState::Own),
                changed: Condvar::new(),
                own: Mutex::new(Some(Listening::new(&lookback, source.waker()))),
                asked: AtomicBool::new(false),
            });
            feeds.push(feed.clone());
            let own = Own { feed, sources: sources.clone(), options: options.clone(), stop: stop.clone() };
            let thread = std::thread::Builder::new()
                .name(format!("lookback-{iface}"))
                .spawn(move || own.run(source))
                .map_err(CaptureError::Thread)?;
            threads.push(thread);
        }
        Ok(Self { stop, threads, feeds })
    }

    /// The feed of interface `iface`, for a live capture on it to take over.
    pub fn feed(&self, iface: &str) -> Option<Arc<Feed>> {
        self.feeds.iter().find(|f| f.iface == iface).cloned()
    }

    /// Stops and joins the capture threads.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for feed in &self.feeds {
            feed.wake();
            feed.notify_stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for LookbackCapture {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Sampled packets waiting to be inserted, copied into one buffer.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    /// (ts_ns, orig_len, start, len)
    packets: Vec<(u64, u32, usize, usize)>,
    seen: u64,
}

impl Batch {
    fn push(&mut self, ts_ns: u64, orig_len: u32, data: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(data);
        self.packets.push((ts_ns, orig_len, start, data.len()));
    }

    /// Forgets the packets stamped at or before `after_ns` (the other side inserted them).
    fn retain_after(&mut self, after_ns: u64) {
        self.packets.retain(|p| p.0 > after_ns);
    }

    /// Inserts what is batched; with `settled`, also records that every packet before that
    /// time is in (the source had nothing more to give).
    fn flush(&mut self, lookback: &Shared, index: u16, settled: Option<u64>) {
        if self.packets.is_empty() && self.seen == 0 && settled.is_none() {
            return;
        }
        let mut l = lock(lookback);
        l.count_seen(index, self.seen);
        for &(ts_ns, orig_len, start, len) in &self.packets {
            l.insert(ts_ns, orig_len, index, &self.data[start..start + len]);
        }
        if let Some(at) = settled {
            l.mark_settled(index, at);
        }
        drop(l);
        self.data.clear();
        self.packets.clear();
        self.seen = 0;
    }
}

/// The lookback's own thread on one interface.
struct Own {
    feed: Arc<Feed>,
    sources: Arc<dyn SourceFactory>,
    options: OpenOptions,
    stop: Arc<AtomicBool>,
}

impl Own {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn run(self, source: Box<dyn CaptureSource>) {
        self.read(source);
        self.feed.set_own(None);
        self.feed.set(FeedState::Closed);
    }

    fn read(&self, mut source: Box<dyn CaptureSource>) {
        let (lookback, index, iface) = (&self.feed.lookback, self.feed.index, &self.feed.iface);
        let (mut sampler, snaplen) = {
            let l = lock(lookback);
            (Sampler::new(l.config().sample_rate), l.config().snaplen as usize)
        };
        let mut batch = Batch::default();
        batch.data.reserve(BATCH_PACKETS * snaplen);
        batch.packets.reserve(BATCH_PACKETS);
        let mut last_flush = Instant::now();
        let mut last_stats = Instant::now();
        let mut last_kernel_drops: u64 = 0;
        let mut last_read_ns = 0u64;
        // The latest moment before which every packet has been read, for a hand-over (a read
        // found the source dry: [`surely_read_ns`]); 0 before the first.
        let mut settled_ns = 0u64;
        // After a capture handed back: packets up to its last are skipped; until it says
        // which that is (`holding`), the timestamps of those seen are kept to count them.
        let mut after_ns = 0u64;
        let mut holding: Option<Vec<u64>> = None;
        let mut reads = 0u32;
        while !self.stopped() {
            let mut quiet = false;
            // The source had nothing more: everything before this is read.
            let mut settled = None;
            // Only while a capture asks for the feed: a clock read per packet costs more
            // than the rest of this loop.
            let began_ns = if self.feed.asked.load(Ordering::Relaxed) { crate::now_ns() } else { 0 };
            match source.next() {
                Ok(Next::Packet(packet)) => {
                    last_read_ns = packet.ts_ns;
                    reads = reads.wrapping_add(1);
                    match holding.as_mut() {
                        Some(seen) if seen.len() < HAND_OVER_MAX => seen.push(packet.ts_ns),
                        // (A hand-back that takes this long: no more is kept meanwhile.)
                        Some(_) => continue,
                        None if packet.ts_ns <= after_ns => continue,
                        None => batch.seen += 1,
                    }
                    if sampler.sample() {
                        batch.push(packet.ts_ns, packet.orig_len, &packet.data[..packet.data.len().min(snaplen)]);
                    }
                    if batch.packets.len() >= BATCH_PACKETS && holding.is_none() {
                        batch.flush(lookback, index, None);
                        last_flush = Instant::now();
                    }
                }
                Ok(Next::Timeout) => {
                    quiet = true;
                    if began_ns > 0 {
                        settled_ns = settled_ns.max(surely_read_ns(began_ns, source.as_ref()));
                    }
                    settled = Some(crate::now_ns().saturating_sub(source.lag().as_nanos() as u64));
                }
                // A wake: from stop(), or from a capture asking to take over.
                Ok(Next::Woken) => quiet = true,
                Err(error) => {
                    tracing::error!(%iface, %error, "lookback capture stopped");
                    break;
                }
            }
            // Reading the clock for every packet would cost more than the rest of the loop.
            if !quiet && !reads.is_multiple_of(64) && !self.feed.asked.load(Ordering::Relaxed) {
                continue;
            }
            match self.feed.state() {
                // Let go once this ring has given every packet from before the capture's ring
                // was open (its blocks retire within the read timeout): a later packet read
                // shows it, and so does a read that found the ring dry that long after (a
                // quiet interface need not wait for its next packet, nor for `settle_ns`).
                FeedState::Asked { at_ns }
                    if holding.is_none()
                        && (last_read_ns.max(settled_ns) >= at_ns
                            || crate::now_ns() > at_ns.saturating_add(settle_ns())) =>
                {
                    batch.flush(lookback, index, None);
                    let drops = source.stats().map(|s| s.dropped).unwrap_or(last_kernel_drops);
                    self.feed.asked.store(false, Ordering::Release);
                    // The capture may have withdrawn meanwhile: then read on.
                    let lent = FeedState::Lent { after_ns: last_read_ns };
                    if !self.feed.transition(|s| matches!(s, FeedState::Asked { .. }), lent) {
                        continue;
                    }
                    lock(lookback).count_kernel_dropped(index, drops.saturating_sub(last_kernel_drops));
                    last_kernel_drops = 0;
                    self.feed.set_own(None);
                    drop(source);
                    tracing::debug!(%iface, "lookback fed by a live capture");
                    match self.lent() {
                        Some(reopened) => source = reopened,
                        None => return,
                    }
                    holding = Some(Vec::new());
                    continue;
                }
                // Asked, but this ring may still hold packets from before the capture's was
                // open: short waits until it lets go (after one second on a quiet interface).
                FeedState::Asked { .. } => source.attend(crate::source::ATTENTIVE),
                FeedState::Given { after_ns: after } => {
                    if let Some(seen) = holding.take() {
                        after_ns = after;
                        batch.seen += seen.iter().filter(|&&t| t > after).count() as u64;
                        batch.retain_after(after);
                    }
                    self.feed.transition(|s| s == FeedState::Given { after_ns: after }, FeedState::Own);
                }
                _ => {}
            }
            if holding.is_none() && (last_flush.elapsed() >= FLUSH_EVERY || quiet) {
                batch.flush(lookback, index, settled);
                last_flush = Instant::now();
            }
            if last_stats.elapsed() >= Duration::from_secs(1) {
                last_stats = Instant::now();
                let drops = source.stats().map(|s| s.dropped).unwrap_or(last_kernel_drops);
                let mut l = lock(lookback);
                l.count_kernel_dropped(index, drops.saturating_sub(last_kernel_drops));
                last_kernel_drops = drops;
                // Age out even when the interface is quiet.
                l.evict(crate::now_ns());
            }
        }
        // What was sampled before the stop is kept.
        if holding.is_none() {
            batch.flush(lookback, index, None);
        }
    }

    /// While a capture feeds the lookback: waits for it to hand back, then opens this
    /// thread's handle again. `None`: stopped meanwhile.
    fn lent(&self) -> Option<Box<dyn CaptureSource>> {
        let iface = &self.feed.iface;
        // Handed back (Returning), or given back at once (Given: the capture ended without
        // waiting for this handle, or gave up waiting).
        let back = |s: FeedState| matches!(s, FeedState::Returning | FeedState::Given { .. });
        loop {
            self.feed.wait_until(back, &|| self.stopped());
            if self.stopped() {
                return None;
            }
            match self.sources.open(iface, &self.options) {
                Ok(source) => {
                    self.feed.set_own(Some(source.as_ref()));
                    self.feed.transition(|s| s == FeedState::Returning, FeedState::Reopened { at_ns: crate::now_ns() });
                    tracing::debug!(%iface, "lookback fed by its own handle again");
                    return Some(source);
                }
                Err(error) => {
                    tracing::error!(%iface, %error, "lookback could not reopen its interface; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceConfig;
    use crate::source::replay::ReplayConfig;
    use crate::{LookbackConfig, now_ns};

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < end, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A capture takes the feed over and hands it back; the feed cannot be claimed again
    /// until the lookback's thread has taken it back; a claim withdrawn before the hand-over
    /// leaves the lookback as it was. (Replayed packets: the hand-over states, not exactness,
    /// which tests/tests/capture_engine.rs checks on a real interface.)
    #[test]
    fn the_feed_goes_out_and_comes_back_and_is_claimed_once_at_a_time() {
        let lookback = Arc::new(Mutex::new(Lookback::new(LookbackConfig::default())));
        let replay = ReplayConfig { file: None, rate_pps: 2000, frame_bytes: 100, clock_skew_ns: 0 };
        let sources = crate::source::factory(&SourceConfig::Replay(replay));
        let config = LookbackCaptureConfig { interfaces: vec!["sim0".into()], ..Default::default() };
        let capture = LookbackCapture::start(&config, sources.clone(), lookback.clone()).unwrap();
        let feed = capture.feed("sim0").unwrap();
        assert!(capture.feed("other").is_none());
        let options = OpenOptions {
            snaplen: 65535,
            buffer_size: 1 << 20,
            promisc: false,
            timeout_ms: FEED_TIMEOUT_MS,
            ..OpenOptions::default()
        };
        let mut source = sources.open("sim0", &options).unwrap();

        let mut feeder = feed.claim().expect("the lookback's own thread feeds it");
        assert!(feed.claim().is_none() && !feed.available(), "one capture at a time");
        wait_for("the lookback to let go", || {
            if let Ok(Next::Packet(p)) = source.next() {
                feeder.packet(p.ts_ns, p.orig_len, p.data);
            }
            feeder.tick();
            feeder.after_ns.is_some()
        });
        let before = lock(&lookback).len();
        for _ in 0..200 {
            if let Ok(Next::Packet(p)) = source.next() {
                feeder.packet(p.ts_ns, p.orig_len, p.data);
            }
            feeder.tick();
        }
        feeder.quiet(now_ns());
        assert!(lock(&lookback).len() > before, "the capture's packets reach the lookback");
        feeder.hand_back(source.as_mut());
        wait_for("the lookback's thread to take its feed back", || feed.available());
        let again = lock(&lookback).stats().packets_sampled;
        wait_for("its own packets again", || lock(&lookback).stats().packets_sampled > again + 20);

        // Claimed and given up at once: withdrawn, or (if the lookback let go already) handed
        // back; either way it is free again.
        let withdrawn = feed.claim().expect("free again");
        withdrawn.hand_back(source.as_mut());
        wait_for("the feed to be free again", || feed.available());
        capture.stop();
        assert!(feed.claim().is_none(), "the lookback's thread is gone");
    }

    /// Claims `feed` for `source` (quiet) and reads until the lookback has let go.
    fn take_over_quietly(feed: &Arc<Feed>, source: &mut dyn CaptureSource) -> Feeder {
        let mut feeder = feed.claim().expect("free");
        feeder.listen(source.waker());
        source.attend(Duration::from_secs(30));
        wait_for("the lookback to let go", || {
            let _ = source.next();
            feeder.tick();
            feeder.after_ns.is_some()
        });
        feeder
    }

    /// A lookback whose feed a capture holds waits for it without polling, and still stops
    /// when asked (a stop missed there would hang the agent's shutdown for ever).
    #[test]
    fn a_lent_lookback_stops_when_asked() {
        let lookback = Arc::new(Mutex::new(Lookback::new(LookbackConfig::default())));
        let sources = crate::source::factory(&SourceConfig::Replay(ReplayConfig::default()));
        let config = LookbackCaptureConfig { interfaces: vec!["sim0".into()], ..Default::default() };
        let options = OpenOptions { timeout_ms: FEED_TIMEOUT_MS, ..OpenOptions::default() };
        for _ in 0..10 {
            let capture = LookbackCapture::start(&config, sources.clone(), lookback.clone()).unwrap();
            let feed = capture.feed("sim0").unwrap();
            let mut source = sources.open("sim0", &options).unwrap();
            let feeder = take_over_quietly(&feed, source.as_mut());
            let (done, stopped) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                capture.stop();
                let _ = done.send(());
            });
            stopped.recv_timeout(Duration::from_secs(10)).expect("the lent lookback's thread stopped");
            drop(feeder);
        }
    }

    /// A ring's reads are trusted only up to a margin before they began (its blocks retire on
    /// a timer); a source without a ring, none.
    #[test]
    fn a_dry_read_vouches_for_what_came_before_it_less_the_sources_lag() {
        struct Lagging(Duration);
        impl CaptureSource for Lagging {
            fn linktype(&self) -> i32 {
                1
            }
            fn set_filter(&mut self, _: &str) -> Result<(), crate::CaptureError> {
                Ok(())
            }
            fn next(&mut self) -> Result<Next<'_>, crate::CaptureError> {
                Ok(Next::Timeout)
            }
            fn stats(&mut self) -> Option<crate::source::SourceStats> {
                None
            }
            fn waker(&self) -> crate::source::Waker {
                crate::source::Waker::new(|| {})
            }
            fn attend(&mut self, _: Duration) {}
            fn lag(&self) -> Duration {
                self.0
            }
        }
        let began = 10_000_000_000;
        let ms = |n: u64| n * 1_000_000;
        assert_eq!(surely_read_ns(began, &Lagging(Duration::ZERO)), began, "no ring, no margin");
        assert_eq!(surely_read_ns(began, &Lagging(Duration::from_millis(5))), began - ms(40), "at least 40 ms");
        assert_eq!(surely_read_ns(began, &Lagging(Duration::from_millis(100))), began - ms(200), "twice the lag");
        // The generated source has none.
        let sources = crate::source::factory(&SourceConfig::Replay(ReplayConfig::default()));
        let replay = sources.open("sim0", &OpenOptions::default()).unwrap();
        assert_eq!(surely_read_ns(began, replay.as_ref()), began);
    }

    /// On a quiet interface whose source would wait a minute between looks, a claim, the
    /// hand-over and the hand-back still take seconds: each side wakes the other's source.
    /// And neither side waits for the one-second bound (`settle_ns`) when no packet comes: a
    /// read that finds its ring dry shows that nothing from before is left. (Not a speed
    /// test: the bound checked is that second, which only the fallback would take.)
    #[test]
    fn a_quiet_feed_changes_hands_without_waiting_out_the_idle_wait() {
        let lookback = Arc::new(Mutex::new(Lookback::new(LookbackConfig::default())));
        let sources = crate::source::factory(&SourceConfig::Replay(ReplayConfig::default()));
        let config = LookbackCaptureConfig { interfaces: vec!["quiet".into()], idle_ms: 60_000, ..Default::default() };
        let capture = LookbackCapture::start(&config, sources.clone(), lookback.clone()).unwrap();
        let feed = capture.feed("quiet").unwrap();
        let options = OpenOptions { timeout_ms: FEED_TIMEOUT_MS, idle_ms: 60_000, ..OpenOptions::default() };
        let mut source = sources.open("quiet", &options).unwrap();
        let claimed = now_ns();
        let feeder = take_over_quietly(&feed, source.as_mut());
        assert!(now_ns() < claimed + settle_ns(), "the lookback let go only at the one-second bound");
        // While the capture feeds the lookback, a query's wake reaches the capture's source.
        lock(&lookback).wake_sources();
        assert!(matches!(source.next().unwrap(), Next::Woken));
        let handing_back = Instant::now();
        feeder.hand_back(source.as_mut());
        assert!(
            handing_back.elapsed() < Duration::from_nanos(settle_ns()),
            "the capture handed back only at the one-second bound"
        );
        wait_for("the lookback's thread to take its feed back", || feed.available());
        capture.stop();
    }
}
