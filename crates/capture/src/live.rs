//! Live capture into the lookback: one [`CaptureSource`] and OS thread per interface.
//!
//! Sources are opened on the caller's thread so a bad interface is an immediate, clear
//! error. The libpcap source hands packets over a ring block at a time (TPACKET_V3), one
//! wakeup per block or per `timeout_ms`, not one per packet. Sampled packets are batched and
//! inserted under one lock per batch ([`FLUSH_EVERY`] or [`BATCH_PACKETS`]). So a packet
//! reaches the lookback at most about [`VISIBILITY_DELAY`] after it was on the wire; queries
//! whose window ends later than that wait for it. Kernel drops are read once a second into
//! the lookback's counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Read timeout, ms: how often a quiet thread checks for stop.
    pub timeout_ms: i32,
    /// Open the interfaces in promiscuous mode.
    pub promisc: bool,
}

impl Default for LookbackCaptureConfig {
    fn default() -> Self {
        Self { interfaces: vec!["lo".into()], buffer_size: 4 << 20, timeout_ms: 50, promisc: true }
    }
}

/// Running capture threads; stopped on drop.
pub struct LookbackCapture {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// A source can block until a packet arrives (libpcap, even with a read timeout), so a
    /// stop on a quiet interface must wake it, not wait for the next packet.
    wakers: Vec<Waker>,
}

type Shared = Arc<Mutex<Lookback>>;

/// Sampled packets are inserted at least this often ...
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// ... or when this many are waiting.
pub const BATCH_PACKETS: usize = 512;
/// Upper bound on the time from the wire to the lookback: the ring block timeout (default
/// `timeout_ms`, 50 ms), one flush interval, and a margin for scheduling.
pub const VISIBILITY_DELAY: Duration = Duration::from_millis(150);

fn lock(lookback: &Shared) -> std::sync::MutexGuard<'_, Lookback> {
    edgecap_common::lock(lookback)
}

impl std::fmt::Debug for LookbackCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookbackCapture").field("threads", &self.threads.len()).finish_non_exhaustive()
    }
}

impl LookbackCapture {
    /// Opens every interface with `sources` and starts one thread per interface.
    pub fn start(
        config: &LookbackCaptureConfig,
        sources: &dyn SourceFactory,
        lookback: Shared,
    ) -> Result<Self, CaptureError> {
        let snaplen = lock(&lookback).config().snaplen;
        let options = OpenOptions {
            snaplen,
            buffer_size: config.buffer_size.max(0) as u32,
            promisc: config.promisc,
            timeout_ms: config.timeout_ms,
        };
        let mut opened = Vec::new();
        for iface in &config.interfaces {
            opened.push((iface.clone(), sources.open(iface, &options)?));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut wakers = Vec::new();
        for (iface, source) in opened {
            wakers.push(source.waker());
            let index = lock(&lookback).add_interface(&iface, source.linktype());
            // A source that can block past its timeout (libpcap with TPACKET_V3 waits in poll
            // once a block was handed over) would keep a partial batch forever on a quiet
            // interface: this thread wakes it when a batch is pending, and the loop flushes it.
            let pending = Arc::new(AtomicBool::new(false));
            if source.may_block() {
                let (stop, pending, waker) = (stop.clone(), pending.clone(), source.waker());
                let flusher = std::thread::Builder::new()
                    .name(format!("lookback-flush-{iface}"))
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(FLUSH_EVERY);
                            if pending.swap(false, Ordering::AcqRel) {
                                waker.wake();
                            }
                        }
                    })
                    .map_err(CaptureError::Thread)?;
                threads.push(flusher);
            }
            let stop = stop.clone();
            let lookback = lookback.clone();
            let thread = std::thread::Builder::new()
                .name(format!("lookback-{iface}"))
                .spawn(move || run(iface, index, source, lookback, stop, pending))
                .map_err(CaptureError::Thread)?;
            threads.push(thread);
        }
        Ok(Self { stop, threads, wakers })
    }

    /// Stops and joins the capture threads.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for waker in &self.wakers {
            waker.wake();
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
    fn flush(&mut self, lookback: &Shared, index: u16) {
        if self.packets.is_empty() && self.seen == 0 {
            return;
        }
        let mut l = lock(lookback);
        l.count_seen(index, self.seen);
        for &(ts_ns, orig_len, start, len) in &self.packets {
            l.insert(ts_ns, orig_len, index, &self.data[start..start + len]);
        }
        drop(l);
        self.data.clear();
        self.packets.clear();
        self.seen = 0;
    }
}

fn run(
    iface: String,
    index: u16,
    mut source: Box<dyn CaptureSource>,
    lookback: Shared,
    stop: Arc<AtomicBool>,
    pending: Arc<AtomicBool>,
) {
    let (mut sampler, snaplen) = {
        let l = lock(&lookback);
        (Sampler::new(l.config().sample_rate), l.config().snaplen as usize)
    };
    let mut batch = Batch::default();
    batch.data.reserve(BATCH_PACKETS * snaplen);
    batch.packets.reserve(BATCH_PACKETS);
    let mut last_flush = Instant::now();
    let mut last_stats = Instant::now();
    let mut last_kernel_drops: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut quiet = false;
        match source.next() {
            Ok(Next::Packet(packet)) => {
                batch.seen += 1;
                if sampler.sample() {
                    let keep = packet.data.len().min(snaplen);
                    let start = batch.data.len();
                    batch.data.extend_from_slice(&packet.data[..keep]);
                    batch.packets.push((packet.ts_ns, packet.orig_len, start, keep));
                    if batch.packets.len() == 1 {
                        pending.store(true, Ordering::Release);
                    }
                }
                if batch.packets.len() >= BATCH_PACKETS {
                    batch.flush(&lookback, index);
                    last_flush = Instant::now();
                }
            }
            Ok(Next::Timeout) => quiet = true,
            // A wake: from stop(), or from the flusher (a batch is waiting).
            Ok(Next::Woken) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                batch.flush(&lookback, index);
                last_flush = Instant::now();
            }
            Err(error) => {
                tracing::error!(%iface, %error, "lookback capture stopped");
                break;
            }
        }
        // Reading the clock for every packet would cost more than the rest of the loop.
        if !quiet && !batch.seen.is_multiple_of(64) {
            continue;
        }
        if last_flush.elapsed() >= FLUSH_EVERY {
            batch.flush(&lookback, index);
            last_flush = Instant::now();
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            let drops = source.stats().map(|s| s.dropped).unwrap_or(last_kernel_drops);
            let mut l = lock(&lookback);
            l.count_kernel_dropped(index, drops.saturating_sub(last_kernel_drops));
            last_kernel_drops = drops;
            // Age out even when the interface is quiet.
            l.evict(crate::now_ns());
        }
    }
    // What was sampled before the stop is kept.
    batch.flush(&lookback, index);
}
