//! Live capture into the lookback: one libpcap handle and OS thread per interface.
//!
//! Handles are opened on the caller's thread so a bad interface is an immediate, clear
//! error. Each thread takes the lookback lock only for sampled packets. Kernel drops
//! (`pcap_stats`) are read once a second into the lookback's counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::CaptureError;
use crate::lookback::{Lookback, Sampler};

#[derive(Clone, Debug)]
pub struct LookbackCaptureConfig {
    pub interfaces: Vec<String>,
    /// Kernel buffer per interface, bytes.
    pub buffer_size: i32,
    /// Read timeout, ms: how often a quiet thread checks for stop.
    pub timeout_ms: i32,
    pub promisc: bool,
}

impl Default for LookbackCaptureConfig {
    fn default() -> Self {
        Self { interfaces: vec!["lo".into()], buffer_size: 4 << 20, timeout_ms: 100, promisc: true }
    }
}

/// Running capture threads; stopped on drop.
pub struct LookbackCapture {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// libpcap can block in poll until a packet arrives (even with a read timeout), so a stop
    /// on a quiet interface must break the loop, not wait for the next packet.
    breakers: Vec<pcap::BreakLoop>,
}

type Shared = Arc<Mutex<Lookback>>;

fn lock(lookback: &Shared) -> std::sync::MutexGuard<'_, Lookback> {
    lookback.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for LookbackCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookbackCapture").field("threads", &self.threads.len()).finish_non_exhaustive()
    }
}

impl LookbackCapture {
    pub fn start(config: &LookbackCaptureConfig, lookback: Shared) -> Result<Self, CaptureError> {
        let snaplen = lock(&lookback).config().snaplen as i32;
        let mut opened = Vec::new();
        for iface in &config.interfaces {
            let open = || {
                pcap::Capture::from_device(iface.as_str())?
                    .promisc(config.promisc)
                    .snaplen(snaplen)
                    .buffer_size(config.buffer_size)
                    .timeout(config.timeout_ms)
                    .immediate_mode(true)
                    .precision(pcap::Precision::Nano)
                    .open()
            };
            let capture = open().map_err(|source| CaptureError::Open { iface: iface.clone(), source })?;
            opened.push((iface.clone(), capture));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut breakers = Vec::new();
        for (iface, mut capture) in opened {
            breakers.push(capture.breakloop_handle());
            let index = lock(&lookback).add_interface(&iface, capture.get_datalink().0);
            let stop = stop.clone();
            let lookback = lookback.clone();
            let thread = std::thread::Builder::new()
                .name(format!("lookback-{iface}"))
                .spawn(move || run(iface, index, capture, lookback, stop))
                .map_err(|e| CaptureError::Open { iface: "thread".into(), source: pcap::Error::IoError(e.kind()) })?;
            threads.push(thread);
        }
        Ok(Self { stop, threads, breakers })
    }

    /// Stops and joins the capture threads.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for breaker in &self.breakers {
            breaker.breakloop();
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

fn run(iface: String, index: u16, mut capture: pcap::Capture<pcap::Active>, lookback: Shared, stop: Arc<AtomicBool>) {
    let mut sampler = Sampler::new(lock(&lookback).config().sample_rate);
    let mut unreported_seen: u64 = 0;
    let mut last_stats = Instant::now();
    let mut last_kernel_drops: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        match capture.next_packet() {
            Ok(packet) => {
                unreported_seen += 1;
                if sampler.sample() {
                    let ts = packet.header.ts;
                    // Nanosecond precision was requested: tv_usec holds nanoseconds.
                    let ts_ns = (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_usec as u64;
                    let mut l = lock(&lookback);
                    l.stats_mut().packets_seen += unreported_seen;
                    unreported_seen = 0;
                    l.insert(ts_ns, packet.header.len, index, packet.data);
                }
            }
            Err(pcap::Error::TimeoutExpired) => {}
            // pcap_breakloop from stop().
            Err(pcap::Error::NoMorePackets) => return,
            Err(error) => {
                tracing::error!(%iface, %error, "lookback capture stopped");
                return;
            }
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            let drops = capture.stats().map(|s| u64::from(s.dropped) + u64::from(s.if_dropped)).unwrap_or(0);
            let mut l = lock(&lookback);
            l.stats_mut().packets_seen += unreported_seen;
            unreported_seen = 0;
            l.stats_mut().kernel_dropped += drops.saturating_sub(last_kernel_drops);
            last_kernel_drops = drops;
            // Age out even when the interface is quiet.
            l.evict(crate::now_ns());
        }
    }
}
