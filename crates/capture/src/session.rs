//! Live captures: one [`CaptureSource`] on its own thread, feeding a bounded queue that a
//! writer thread drains into a [`PacketSink`] (a shard writer), with limits and loss
//! accounting.
//!
//! * The capture thread copies packets into batches (one allocation per batch, not per
//!   packet) and hands them to the queue without ever blocking: when the queue is full the
//!   batch is dropped and counted as `agent_dropped`. So a slow disk shows up as a counted
//!   agent drop, never as a silently growing kernel drop.
//! * The writer applies the packet and byte limits exactly: the packet that would exceed a
//!   limit is not written; the packet that reaches it is written and ends the capture.
//!   Bytes are the captured packet bytes (caplen), without file headers.
//! * Time limit: from [`LiveCapture::start`], kept by the process's deadline thread
//!   (`deadlines.rs`), which ends the capture and wakes its source at that moment.
//! * Whichever comes first (a limit, [`LiveCapture::stop`], or an error) ends the capture and
//!   is recorded as the [`StopReason`].
//! * The source's counters (libpcap's `pcap_stats`) are read once a second and at the end.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::CaptureError;
use crate::live::{FEED_TIMEOUT_MS, Feed, Feeder};
use crate::records::{Batch, Framing, Records};
use crate::source::{CaptureSource, MAX_SNAPLEN, Next, OpenOptions, Waker};

/// A share of a budget several captures draw from (a full capture's limits across PoPs):
/// the packets and bytes this capture may write so far, raised as more is granted, and
/// whether more can come. A capture at its allowance waits for more (its queue filling,
/// packets dropped and counted when it is full) and ends with [`StopReason::Budget`] once
/// none is left.
#[derive(Debug, Default)]
pub struct Allowance {
    packets: AtomicU64,
    bytes: AtomicU64,
    exhausted: AtomicBool,
}

impl Allowance {
    /// An allowance of `packets` and `bytes` (`u64::MAX`: not limited by this one).
    pub fn new(packets: u64, bytes: u64) -> Self {
        Self { packets: AtomicU64::new(packets), bytes: AtomicU64::new(bytes), exhausted: AtomicBool::new(false) }
    }

    /// Raises the allowance (never lowers it); `exhausted`: nothing more will be granted.
    pub fn grant(&self, packets: u64, bytes: u64, exhausted: bool) {
        self.packets.fetch_max(packets, Ordering::AcqRel);
        self.bytes.fetch_max(bytes, Ordering::AcqRel);
        if exhausted {
            self.exhausted.store(true, Ordering::Release);
        }
    }

    /// (packets, bytes) allowed now.
    pub fn current(&self) -> (u64, u64) {
        (self.packets.load(Ordering::Acquire), self.bytes.load(Ordering::Acquire))
    }

    /// Whether nothing more will be granted.
    pub fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Acquire)
    }
}

impl PartialEq for Allowance {
    fn eq(&self, other: &Self) -> bool {
        self.current() == other.current() && self.is_exhausted() == other.is_exhausted()
    }
}

impl Eq for Allowance {}

/// Limits of one capture; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Longest the capture runs, from [`LiveCapture::start`]. Kept by the process's deadline
    /// thread (`deadlines.rs`), which ends the capture and wakes its source at that moment, so
    /// it holds on a silent interface too.
    pub time: Option<Duration>,
    /// Packets written: the packet that reaches the limit is written and ends the capture.
    /// `Some(0)` ends it at the first packet, writing nothing.
    pub packets: Option<u64>,
    /// Captured bytes written (caplen, no file headers): the packet that reaches the limit is
    /// written and ends the capture; one that would go past it is not written, and ends it.
    pub bytes: Option<u64>,
    /// A share of a shared budget, on top of `packets` and `bytes` (see [`Allowance`]).
    pub allowance: Option<Arc<Allowance>>,
}

/// How to run one live capture; [`LiveConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// Interface name. The caller opens the source on it; here it only names the threads.
    pub iface: String,
    /// pcap-filter expression, already validated (see [`crate::bpf`]); empty = everything.
    pub filter: String,
    /// An account's scope ([`crate::scope::Scope::to_bpf`]), applied in user space after
    /// `filter` so the packets it leaves out are counted (`excluded`); empty = none.
    pub scope: String,
    /// Bytes kept of each packet, for [`LiveConfig::open_options`].
    pub snaplen: u32,
    /// Kernel buffer, bytes.
    pub buffer_size: u32,
    /// Promiscuous mode, for [`LiveConfig::open_options`].
    pub promisc: bool,
    /// Read timeout, ms: how long a quiet capture waits before checking limits and stop.
    pub timeout_ms: i32,
    /// When the capture ends by itself.
    pub limits: Limits,
    /// How much the queue between the capture and writer threads holds: this many full
    /// batches' packets (`queue_batches x batch_packets`), however full its batches are.
    pub queue_batches: usize,
    /// Packets per batch. The writer thread wakes once per batch (or per quiet read timeout):
    /// 1024 to a batch woke it a quarter as often as 256 and cut the capture's CPU by about
    /// a tenth at twice top speed (docs/benchmarks.md), with the queue's bound in packets kept.
    pub batch_packets: usize,
    /// Test hook: a delay per written packet, to make the writer slower than the wire.
    pub writer_delay: Option<Duration>,
    /// The lookback's feed of this interface, to take over while the capture runs (one
    /// kernel copy per packet instead of two; see [`crate::live`]). The source then reads
    /// every packet and `filter` runs in user space. Taken only if no other capture has it.
    pub feed: Option<Arc<Feed>>,
    /// Called once when the capture has ended, so that its owner need not hold a thread in
    /// [`LiveCapture::wait`] meanwhile.
    pub on_end: Option<OnEnd>,
}

/// What a capture calls when it has ended: from its last thread as that thread exits, after
/// the sink has finished (flushed and synced). [`LiveCapture::wait`] then returns at once.
/// Not called if [`LiveCapture::start`] fails.
#[derive(Clone)]
pub struct OnEnd(Arc<dyn Fn() + Send + Sync>);

impl OnEnd {
    /// Calls `f` at the end. It must not block.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for OnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnEnd")
    }
}

impl LiveConfig {
    /// How the source of this capture is to be opened.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            snaplen: self.snaplen,
            buffer_size: self.buffer_size,
            promisc: self.promisc,
            // Feeding the lookback, ring blocks retire as often as the lookback's own.
            timeout_ms: if self.feed.is_some() { self.timeout_ms.clamp(1, FEED_TIMEOUT_MS) } else { self.timeout_ms },
            idle_ms: crate::source::IDLE_MS,
        }
    }

    /// A capture of `iface` running `filter` (validated pcap-filter text; empty: every
    /// packet), with the defaults: whole packets ([`MAX_SNAPLEN`]), a 32 MiB kernel buffer,
    /// promiscuous, a 100 ms read timeout, no limits, a queue of 256 batches of 1024 packets.
    pub fn new(iface: &str, filter: &str) -> Self {
        Self {
            iface: iface.to_string(),
            filter: filter.to_string(),
            scope: String::new(),
            snaplen: MAX_SNAPLEN,
            buffer_size: 32 << 20,
            promisc: true,
            timeout_ms: 100,
            limits: Limits::default(),
            queue_batches: 256,
            batch_packets: 1024,
            writer_delay: None,
            feed: None,
            on_end: None,
        }
    }
}

/// Why a capture ended. Only the first reason is recorded: whatever happens after it (the
/// threads winding down) does not replace it. Displayed as `time_limit`, `packet_limit`,
/// `byte_limit`, `stopped` or `failed: <why>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// [`Limits::time`] elapsed.
    TimeLimit,
    /// [`Limits::packets`] packets were written.
    PacketLimit,
    /// [`Limits::bytes`] was reached, or the next packet would have gone past it.
    ByteLimit,
    /// [`LiveCapture::stop`] or [`StopHandle::stop`] was called, or the [`LiveCapture`] was
    /// dropped.
    Stopped,
    /// Its share of a shared budget was spent and no more was left ([`Allowance`]).
    Budget,
    /// Reading the source failed (the source's error), writing to the sink failed
    /// (`write: <error>`), or the writer thread panicked.
    Failed(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::TimeLimit => write!(f, "time_limit"),
            StopReason::PacketLimit => write!(f, "packet_limit"),
            StopReason::ByteLimit => write!(f, "byte_limit"),
            StopReason::Stopped => write!(f, "stopped"),
            StopReason::Budget => write!(f, "budget"),
            StopReason::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Loss accounting of a capture (per interface: one capture is one interface).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Packets the kernel saw on the interface that passed the filter (`ps_recv`).
    pub received: u64,
    /// Packets libpcap delivered to us (matched the filter).
    pub matched: u64,
    /// Packets written to the sink.
    pub written: u64,
    /// Dropped by the kernel (`ps_drop + ps_ifdrop`): buffer full.
    pub kernel_dropped: u64,
    /// Dropped by the agent: the queue to the writer was full.
    pub agent_dropped: u64,
    /// Captured bytes of the written packets (caplen), without file headers: what
    /// [`Limits::bytes`] counts.
    pub bytes_written: u64,
    /// Packets the filter matched that the account's scope left out.
    pub excluded: u64,
    /// Why the capture ended; `None` while it runs.
    pub stop_reason: Option<StopReason>,
}

impl Counters {
    /// One line, `key=value`, as the benchmark scripts read it.
    pub fn line(&self) -> String {
        format!(
            "received={} matched={} written={} kernel_drops={} agent_drops={} bytes={} stop_reason={}",
            self.received,
            self.matched,
            self.written,
            self.kernel_dropped,
            self.agent_dropped,
            self.bytes_written,
            self.stop_reason.as_ref().map_or("running".to_string(), |r| r.to_string())
        )
    }
}

#[derive(Default)]
struct Shared {
    received: AtomicU64,
    matched: AtomicU64,
    written: AtomicU64,
    kernel_dropped: AtomicU64,
    agent_dropped: AtomicU64,
    bytes_written: AtomicU64,
    excluded: AtomicU64,
    stop: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    /// Interrupts the source's wait for packets, so that a stop or a time limit does not
    /// wait for the next packet or read timeout.
    waker: Option<Waker>,
    /// The capture's threads still running, and what to call when none is.
    threads: AtomicUsize,
    on_end: Option<OnEnd>,
    /// Packets sent to the writer and not yet taken by it (see [`to_writer`]).
    queued: AtomicUsize,
    /// The writer has ended (a limit, a failed write, the end): what it left queued is never
    /// taken, and nothing sent now is a drop.
    writer_gone: AtomicBool,
}

impl Shared {
    /// Records the first reason only, and asks both threads to stop.
    fn finish(&self, reason: StopReason) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason);
            }
            self.stop.store(true, Ordering::Release);
        }
        self.wake();
    }

    /// Records a failure even after another reason ended the capture: a write that fails
    /// while the capture winds down (the last fsync, the last manifest) means what was
    /// captured is not all safely on disk, and the reason must say so.
    fn fail(&self, reason: String) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            *r = Some(StopReason::Failed(reason));
            self.stop.store(true, Ordering::Release);
        }
        self.wake();
    }

    /// Interrupts the source's wait (the capture thread reads `stop` as it returns).
    fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.wake();
        }
    }

    fn snapshot(&self) -> Counters {
        Counters {
            received: self.received.load(Ordering::Relaxed),
            matched: self.matched.load(Ordering::Relaxed),
            excluded: self.excluded.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            kernel_dropped: self.kernel_dropped.load(Ordering::Relaxed),
            agent_dropped: self.agent_dropped.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            stop_reason: self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

impl crate::deadlines::Expire for Shared {
    fn expire(&self) {
        self.finish(StopReason::TimeLimit);
    }
}

/// Held by each of a capture's threads: the last to exit (or unwind) calls the capture's
/// [`OnEnd`].
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.threads.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(on_end) = &self.0.on_end
        {
            (on_end.0)();
        }
    }
}

/// Where written packets go (a shard writer). Called from the writer thread only.
pub trait PacketSink: Send {
    /// Writes one packet: `ts_ns` nanoseconds since the Unix epoch, `orig_len` its length on
    /// the wire, `data` its captured bytes. An error ends the capture (`failed: write: ...`);
    /// [`PacketSink::finish`] is still called.
    fn write(&mut self, ts_ns: u64, orig_len: u32, data: &[u8]) -> io::Result<()>;
    /// Called once at the end with the final counters; flushes and syncs.
    fn finish(&mut self, counters: &Counters) -> io::Result<()>;
    /// How the capture thread is to frame packets for [`PacketSink::write_records`]; asked
    /// once, before the capture starts.
    fn framing(&self) -> Framing {
        Framing::Bare
    }
    /// Writes a run of packets framed as [`PacketSink::framing`] said (errors as
    /// [`PacketSink::write`]). By default, one [`PacketSink::write`] per packet.
    fn write_records(&mut self, records: Records<'_>) -> io::Result<()> {
        for (ts_ns, orig_len, data) in records.iter() {
            self.write(ts_ns, orig_len, data)?;
        }
        Ok(())
    }
}

/// Stops a [`LiveCapture`]; cheap to clone and to send.
#[derive(Clone)]
pub struct StopHandle(Arc<Shared>);

impl StopHandle {
    /// Same as [`LiveCapture::stop`].
    pub fn stop(&self) {
        self.0.finish(StopReason::Stopped);
    }

    /// The counters now (for progress reports while the owner waits).
    pub fn counters(&self) -> Counters {
        self.0.snapshot()
    }
}

/// A running capture.
pub struct LiveCapture {
    shared: Arc<Shared>,
    capture: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<()>>>,
    /// The time limit, kept by the process's deadline thread until the capture ends.
    deadline: Option<crate::deadlines::Entry>,
}

impl LiveCapture {
    /// Sets the filter on `source` (opened with [`LiveConfig::open_options`]; errors here are
    /// the caller's to report), then starts the threads.
    pub fn start(
        config: LiveConfig,
        mut source: Box<dyn CaptureSource>,
        sink: Box<dyn PacketSink>,
    ) -> Result<Self, CaptureError> {
        // Feeding the lookback: every packet is read, and the filter runs here instead.
        // The filter is set before the lookback lets go: setting a filter empties the ring
        // of what it held, which must not be packets the lookback counts on this side for.
        // Not when the capture keeps less of each packet than the lookback does, nor when its
        // filter reads VLAN or other encapsulation headers (see `user_space_view`).
        let can_feed = |feed: &&Arc<Feed>| {
            feed.available() && config.snaplen as usize >= feed.snaplen() && !reads_encapsulation(&config.filter)
        };
        let feeding = match config.feed.as_ref().filter(can_feed) {
            Some(feed) => {
                // Refused here like a kernel filter would be.
                let filter = (!config.filter.is_empty())
                    .then(|| crate::compile_offline(source.linktype(), config.snaplen as i32, &config.filter))
                    .transpose()?;
                source.set_filter("")?;
                match feed.claim() {
                    Some(feeder) => Feeding { feeder: Some(feeder), filter },
                    // Another capture took it meanwhile.
                    None => {
                        source.set_filter(&config.filter)?;
                        Feeding { feeder: None, filter: None }
                    }
                }
            }
            None => {
                source.set_filter(&config.filter)?;
                Feeding { feeder: None, filter: None }
            }
        };
        // A source waits for packets up to its timeout, so limits and stop cannot wait for the
        // next packet: they wake it (an eventfd beside the ring for libpcap).
        let shared = Arc::new(Shared {
            waker: Some(source.waker()),
            threads: AtomicUsize::new(2),
            on_end: config.on_end.clone(),
            ..Shared::default()
        });
        let framing = sink.framing();
        let (tx, rx) = to_writer(&shared, config.queue_batches.max(1) * config.batch_packets.max(1));
        // Emptied batches go back to the capture thread, so their memory is reused instead of
        // freed and faulted in (and zeroed by the kernel) again. (No more than were sent.)
        let (recycle_tx, recycle_rx) = channel::<Batch>();
        let writer = {
            let shared = shared.clone();
            let limits = config.limits.clone();
            let delay = config.writer_delay;
            std::thread::Builder::new()
                .name(format!("writer-{}", config.iface))
                .spawn(move || {
                    let _running = Running(shared.clone());
                    write_loop(rx, recycle_tx, sink, shared, limits, delay)
                })
                .map_err(CaptureError::Thread)?
        };
        // (From here on an error drops `tx`, which ends the writer thread.)
        let deadline = match config.limits.time {
            Some(limit) => {
                let target: Weak<dyn crate::deadlines::Expire> = Arc::downgrade(&shared) as _;
                // (A limit too far to add to the clock is no limit.)
                match Instant::now().checked_add(limit) {
                    Some(at) => Some(crate::deadlines::at(at, target).map_err(CaptureError::Thread)?),
                    None => None,
                }
            }
            None => None,
        };
        let capture = {
            let shared = shared.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name(format!("capture-{}", config.iface))
                .spawn(move || {
                    let _running = Running(shared.clone());
                    capture_loop(source, feeding, framing, tx, recycle_rx, shared, config)
                })
                .map_err(CaptureError::Thread)?
        };
        Ok(Self { shared, capture: Some(capture), writer: Some(writer), deadline })
    }

    /// Asks the capture to end (reason `stopped`, unless a limit came first).
    pub fn stop(&self) {
        self.shared.finish(StopReason::Stopped);
    }

    /// A handle that stops this capture from another thread or task, so the owner can block
    /// in [`LiveCapture::wait`] meanwhile.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.shared.clone())
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        self.shared.snapshot()
    }

    /// Waits for the end; returns the final counters. Everything written has been flushed
    /// and synced by the sink by then.
    pub fn wait(mut self) -> Counters {
        if let Some(t) = self.capture.take() {
            let _ = t.join();
        }
        if let Some(t) = self.writer.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.shared.fail(format!("write: {e}")),
                Err(_) => self.shared.fail("writer thread panicked".into()),
            }
        }
        self.deadline = None;
        self.shared.snapshot()
    }
}

impl Drop for LiveCapture {
    fn drop(&mut self) {
        self.shared.finish(StopReason::Stopped);
        if let Some(t) = self.capture.take() {
            let _ = t.join();
        }
        if let Some(t) = self.writer.take() {
            let _ = t.join();
        }
    }
}

/// Whether a filter reads headers that the kernel's filter and user space see differently:
/// a VLAN tag (Linux takes it out of the frame before packet sockets see it; libpcap puts it
/// back into the data it hands over), or what follows one (MPLS, PPPoE, tunnels). A capture
/// with such a filter keeps its kernel filter on its own ring and does not feed the lookback.
pub(crate) fn reads_encapsulation(filter: &str) -> bool {
    filter
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| matches!(w, "vlan" | "mpls" | "pppoed" | "pppoes" | "geneve" | "vxlan"))
}

/// What the kernel's filter sees of a packet libpcap handed over: an Ethernet frame without
/// its outer 802.1Q/802.1ad tag (and 4 bytes shorter on the wire), so that a filter run here
/// matches what it would have matched in the kernel ("ip" matches tagged IPv4 there).
fn user_space_view<'a>(linktype: i32, data: &'a [u8], orig_len: u32, scratch: &'a mut Vec<u8>) -> (&'a [u8], u32) {
    let tagged = linktype == 1 && data.len() >= 18 && matches!([data[12], data[13]], [0x81, 0x00] | [0x88, 0xa8]);
    if !tagged {
        return (data, orig_len);
    }
    scratch.clear();
    scratch.extend_from_slice(&data[..12]);
    scratch.extend_from_slice(&data[16..]);
    (scratch, orig_len.saturating_sub(4))
}

/// A capture that feeds the lookback: its feeder, and its filter run in user space (both
/// `None` when it does not).
struct Feeding {
    feeder: Option<Feeder>,
    filter: Option<pcap::BpfProgram>,
}

fn capture_loop(
    mut source: Box<dyn CaptureSource>,
    mut feeding: Feeding,
    framing: Framing,
    tx: ToWriter,
    recycled: Receiver<Batch>,
    shared: Arc<Shared>,
    config: LiveConfig,
) {
    let linktype = source.linktype();
    if let Some(feeder) = feeding.feeder.as_mut() {
        feeder.listen(source.waker());
    }
    let mut untagged = Vec::new();
    let fresh = || match recycled.try_recv() {
        Ok(mut b) => {
            b.clear();
            b
        }
        Err(_) => Batch::with_capacity(framing, config.batch_packets),
    };
    let mut batch = fresh();
    // The account's scope, compiled for this source's link type.
    let scope = if config.scope.is_empty() {
        None
    } else {
        match crate::compile_offline(source.linktype(), MAX_SNAPLEN as i32, &config.scope) {
            Ok(program) => Some(program),
            Err(error) => {
                shared.finish(StopReason::Failed(format!("account scope: {error}")));
                return;
            }
        }
    };
    let mut last_stats = Instant::now();
    let mut since_clock = 0u32;
    let send = |batch: &mut Batch, shared: &Shared| {
        if batch.is_empty() {
            return true;
        }
        let full = std::mem::replace(batch, fresh());
        match tx.try_send(full) {
            Sent::Queued => true,
            Sent::Full(dropped) => {
                shared.agent_dropped.fetch_add(dropped.len() as u64, Ordering::Relaxed);
                true
            }
            Sent::WriterGone => false,
        }
    };
    // The time limit is enforced by the deadline thread (it ends the capture and wakes the
    // source); here the clock is only read, for the stats, every 1024 packets or when the
    // read times out, not once per packet.
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let mut check_clock = false;
        match source.next() {
            Ok(Next::Packet(packet)) => {
                // Counted for every packet read, whether the filter takes it or not, so that a
                // busy interface whose packets mostly miss still checks the clock.
                since_clock += 1;
                if since_clock >= 1024 {
                    since_clock = 0;
                    check_clock = true;
                }
                if let Some(feeder) = feeding.feeder.as_mut() {
                    feeder.packet(packet.ts_ns, packet.orig_len, packet.data);
                    if since_clock.is_multiple_of(64) {
                        feeder.tick();
                    }
                }
                let passes = feeding.filter.as_ref().is_none_or(|filter| {
                    let (data, orig_len) = user_space_view(linktype, packet.data, packet.orig_len, &mut untagged);
                    crate::offline::matches(filter, data, orig_len)
                });
                if passes {
                    shared.matched.fetch_add(1, Ordering::Relaxed);
                    if scope.as_ref().is_some_and(|s| !crate::offline::matches(s, packet.data, packet.orig_len)) {
                        shared.excluded.fetch_add(1, Ordering::Relaxed);
                    } else {
                        batch.push(packet.ts_ns, packet.orig_len, packet.data);
                        if batch.len() >= config.batch_packets && !send(&mut batch, &shared) {
                            break;
                        }
                    }
                }
            }
            Ok(Next::Timeout) => {
                if let Some(feeder) = feeding.feeder.as_mut() {
                    feeder.tick();
                    feeder.quiet(crate::now_ns().saturating_sub(source.lag().as_nanos() as u64));
                }
                if !send(&mut batch, &shared) {
                    break;
                }
                check_clock = true;
            }
            // A wake: a stop or the time limit (the reason is recorded already), or lookback
            // packets waiting to be inserted.
            Ok(Next::Woken) => {
                if shared.stop.load(Ordering::Acquire) {
                    break;
                }
                if let Some(feeder) = feeding.feeder.as_mut() {
                    feeder.tick();
                }
            }
            Err(error) => {
                shared.finish(StopReason::Failed(error.to_string()));
                break;
            }
        }
        if check_clock && last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            read_stats(source.as_mut(), &shared, feeding.feeder.as_mut());
            // A busy interface never times out: flush what is batched at least once a second.
            if !send(&mut batch, &shared) {
                break;
            }
        }
    }
    // What was captured before the end is kept.
    send(&mut batch, &shared);
    read_stats(source.as_mut(), &shared, feeding.feeder.as_mut());
    // The lookback's own handle takes over again before this one closes.
    if let Some(feeder) = feeding.feeder.take() {
        feeder.hand_back(source.as_mut());
    }
}

fn read_stats(source: &mut dyn CaptureSource, shared: &Shared, feeder: Option<&mut Feeder>) {
    if let Some(stats) = source.stats() {
        match feeder {
            // Every packet reaches this handle: the filter's count is ours, plus the drops.
            Some(feeder) => {
                feeder.kernel_dropped(stats.dropped);
                let matched = shared.matched.load(Ordering::Relaxed);
                shared.received.store(matched + stats.dropped, Ordering::Relaxed);
            }
            None => shared.received.store(stats.received, Ordering::Relaxed),
        }
        shared.kernel_dropped.store(stats.dropped, Ordering::Relaxed);
    }
}

/// Whether one more packet (`bytes` written after it) fits the allowance, waiting for more to
/// be granted while some may come; `false` (and the capture finished) when none will.
fn within(allowance: &Allowance, shared: &Shared, written: u64, bytes: u64) -> bool {
    loop {
        let (packets_allowed, bytes_allowed) = allowance.current();
        if written < packets_allowed && bytes <= bytes_allowed {
            return true;
        }
        if allowance.is_exhausted() {
            shared.finish(StopReason::Budget);
            return false;
        }
        if shared.stop.load(Ordering::Acquire) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The queue from the capture thread to the writer: batches of at most `capacity` packets in
/// all waiting (beyond that a batch is dropped and counted, and the capture goes on), counted
/// in packets so that partly filled batches (a quiet link's, sent at each read timeout) leave
/// the same slack as full ones. Not a `sync_channel`, which allocates and initializes a slot
/// for each batch it could hold when the capture starts (~150 KiB at 1 024, at every start);
/// this one allocates as batches wait. Its count and its end are kept in `shared`.
fn to_writer(shared: &Arc<Shared>, capacity: usize) -> (ToWriter, FromCapture) {
    let (tx, rx) = channel::<Batch>();
    (ToWriter { tx, shared: shared.clone(), capacity }, FromCapture { rx, shared: shared.clone() })
}

/// The capture thread's end of [`to_writer`].
struct ToWriter {
    tx: Sender<Batch>,
    shared: Arc<Shared>,
    capacity: usize,
}

/// The writer's end of [`to_writer`]: a batch taken makes room for another; dropped, the
/// writer is gone.
struct FromCapture {
    rx: Receiver<Batch>,
    shared: Arc<Shared>,
}

impl FromCapture {
    fn recv(&self) -> Option<Batch> {
        let batch = self.rx.recv().ok()?;
        self.shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        Some(batch)
    }
}

impl Drop for FromCapture {
    fn drop(&mut self) {
        self.shared.writer_gone.store(true, Ordering::Release);
    }
}

enum Sent {
    Queued,
    /// The queue is full: the batch is handed back, to be counted as dropped.
    Full(Batch),
    /// The writer has ended (a limit, or a write that failed).
    WriterGone,
}

impl ToWriter {
    fn try_send(&self, batch: Batch) -> Sent {
        if self.shared.writer_gone.load(Ordering::Acquire) {
            return Sent::WriterGone;
        }
        let n = batch.len();
        if self.shared.queued.fetch_add(n, Ordering::AcqRel) + n > self.capacity {
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            return Sent::Full(batch);
        }
        match self.tx.send(batch) {
            Ok(()) => Sent::Queued,
            Err(_) => Sent::WriterGone,
        }
    }
}

fn write_loop(
    rx: FromCapture,
    recycle: Sender<Batch>,
    mut sink: Box<dyn PacketSink>,
    shared: Arc<Shared>,
    limits: Limits,
    delay: Option<Duration>,
) -> io::Result<()> {
    let mut writer = Writer { sink: sink.as_mut(), shared: &shared, limits: &limits, delay, written: 0, bytes: 0 };
    let mut result = Ok(());
    while let Some(batch) = rx.recv() {
        match writer.batch(&batch) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        // Hand the memory back.
        let _ = recycle.send(batch);
    }
    // The capture thread may still be sending: this ends it, even while the queue it left is
    // full.
    drop(rx);
    let mut counters = shared.snapshot();
    counters.stop_reason.get_or_insert(StopReason::Stopped);
    let finished = sink.finish(&counters);
    result.and(finished)
}

/// The writer thread's side of the limits: what it has written so far.
struct Writer<'a> {
    sink: &'a mut dyn PacketSink,
    shared: &'a Shared,
    limits: &'a Limits,
    delay: Option<Duration>,
    written: u64,
    bytes: u64,
}

impl Writer<'_> {
    /// Writes the packets of `batch` that the limits let through, in runs (one call to the
    /// sink per run); `Ok(false)` when a limit ended the capture. The packet that reaches a
    /// limit is written, the one that would go past it is not, as one packet at a time would.
    fn batch(&mut self, batch: &Batch) -> io::Result<bool> {
        let (mut from, mut written, mut bytes) = (0, self.written, self.bytes);
        let mut end = None;
        for i in 0..batch.len() {
            let len = batch.caplen(i) as u64;
            if self.limits.packets.is_some_and(|max| written >= max) {
                end = Some((i, Some(StopReason::PacketLimit)));
                break;
            }
            if self.limits.bytes.is_some_and(|max| bytes + len > max) {
                end = Some((i, Some(StopReason::ByteLimit)));
                break;
            }
            if let Some(allowance) = &self.limits.allowance {
                let (packets_allowed, bytes_allowed) = allowance.current();
                if !(written < packets_allowed && bytes + len <= bytes_allowed) {
                    // Waiting for more: what is already let through is written first (its
                    // counts are what the grants follow).
                    self.write(batch, from..i, written, bytes)?;
                    from = i;
                    if !within(allowance, self.shared, written, bytes + len) {
                        return Ok(false);
                    }
                }
            }
            if let Some(d) = self.delay {
                std::thread::sleep(d);
            }
            written += 1;
            bytes += len;
            if self.limits.packets.is_some_and(|max| written >= max) {
                end = Some((i + 1, Some(StopReason::PacketLimit)));
                break;
            }
            if self.limits.bytes.is_some_and(|max| bytes >= max) {
                end = Some((i + 1, Some(StopReason::ByteLimit)));
                break;
            }
        }
        let (to, reason) = end.unwrap_or((batch.len(), None));
        self.write(batch, from..to, written, bytes)?;
        match reason {
            Some(reason) => {
                self.shared.finish(reason);
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// Writes packets `range` of `batch`, after which `written` packets and `bytes` bytes
    /// are written in all.
    fn write(&mut self, batch: &Batch, range: std::ops::Range<usize>, written: u64, bytes: u64) -> io::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.sink.write_records(batch.records(range)) {
            self.shared.finish(StopReason::Failed(format!("write: {e}")));
            return Err(e);
        }
        (self.written, self.bytes) = (written, bytes);
        self.shared.written.store(written, Ordering::Relaxed);
        self.shared.bytes_written.store(bytes, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue to the writer holds `capacity` batches, a batch sent beyond that is handed
    /// back to be counted as dropped, a batch taken makes room; once the writer has gone,
    /// a send is not a drop, even with the queue it left full.
    #[test]
    fn the_queue_to_the_writer_is_bounded_and_ends_with_its_writer() {
        let shared = Arc::new(Shared::default());
        // Room for 4 packets, in batches of any fill.
        let (queue, rx) = to_writer(&shared, 4);
        let batch = |packets: usize| {
            let mut b = Batch::with_capacity(crate::records::Framing::Pcap, packets);
            (0..packets).for_each(|i| b.push(i as u64, 60, &[0; 60]));
            b
        };
        assert!(matches!(queue.try_send(batch(2)), Sent::Queued));
        assert!(matches!(queue.try_send(batch(2)), Sent::Queued));
        assert!(matches!(queue.try_send(batch(1)), Sent::Full(_)), "a fifth packet waits beyond the bound");
        let _taken = rx.recv().unwrap();
        assert!(matches!(queue.try_send(batch(1)), Sent::Queued), "room again, and partly filled batches");
        assert!(matches!(queue.try_send(batch(1)), Sent::Queued), "count what they hold");
        assert!(matches!(queue.try_send(batch(1)), Sent::Full(_)));
        // The writer ends (a limit), leaving the queue full.
        drop(rx);
        assert!(matches!(queue.try_send(batch(1)), Sent::WriterGone));
    }

    #[test]
    fn a_filter_runs_in_user_space_on_what_the_kernel_would_have_seen() {
        // A VLAN-tagged IPv4/UDP frame as libpcap hands it over (tag put back in the data).
        let mut tagged = vec![0u8; 12];
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a, 0x08, 0x00]);
        tagged.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        tagged.extend_from_slice(&[0, 53, 0, 53, 0, 8, 0, 0]);
        let mut scratch = Vec::new();
        let (view, len) = user_space_view(1, &tagged, tagged.len() as u32, &mut scratch);
        assert_eq!((view.len(), len as usize), (tagged.len() - 4, tagged.len() - 4));
        let udp = crate::compile_offline(1, 65535, "udp port 53").unwrap();
        assert!(crate::offline::matches(&udp, view, len), "matches as the kernel's filter does");
        assert!(!crate::offline::matches(&udp, &tagged, tagged.len() as u32), "(the frame as handed over would not)");
        // Untagged frames and other link types are left as they are.
        let untagged = [&tagged[..12], &tagged[16..]].concat();
        assert_eq!(user_space_view(1, &untagged, 99, &mut scratch).1, 99);
        assert_eq!(user_space_view(113, &tagged, 99, &mut scratch).0.len(), tagged.len());
        // A filter about VLANs or what they carry keeps its kernel filter (no feeding).
        assert!(reads_encapsulation("vlan 10 and udp") && reads_encapsulation("(mpls) and ip"));
        assert!(!reads_encapsulation("udp port 53") && !reads_encapsulation("host 10.0.0.1"));
    }
}
