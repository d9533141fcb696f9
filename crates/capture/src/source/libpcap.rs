//! The production source: a libpcap handle on a real interface.
//!
//! Handles are **not** in immediate mode: the kernel hands packets over a ring block at a time
//! (TPACKET_V3), one wakeup per block or per timeout, not one per packet. Timestamps are
//! nanoseconds. The filter runs in the kernel. Reads never block: the source waits in its own
//! `poll` on the ring and on an eventfd its wakers write (see [`LibpcapSource`]). A quiet
//! ring is waited on for [`OpenOptions::idle_ms`], not the block timeout, unless a wake made
//! the source attentive.

use std::time::{Duration, Instant};

use super::{ATTENTIVE, CaptureSource, Next, OpenOptions, PacketRef, SourceFactory, SourceStats, Waker, wait_limit};
use crate::CaptureError;

/// Opens [`LibpcapSource`]s.
#[derive(Debug, Default)]
pub struct Libpcap;

impl SourceFactory for Libpcap {
    fn open(&self, iface: &str, options: &OpenOptions) -> Result<Box<dyn CaptureSource>, CaptureError> {
        Ok(Box::new(LibpcapSource::open(iface, options)?))
    }
}

/// A libpcap capture handle, read without blocking; waits happen in [`LibpcapSource::wait`].
///
/// Why not libpcap's own blocking read and `pcap_breakloop` to wake it: with TPACKET_V3, a
/// `pcap_breakloop` that lands while `pcap_next_ex` is taking a packet makes it answer "break"
/// with that packet already consumed, so the packet is lost without being counted anywhere
/// (found by the capture benchmark: 6-29 packets of 3.3 M at twice top speed while a waker
/// fired every few milliseconds). Here a wake is an eventfd beside the ring in one `poll`, and
/// a read never races it.
pub struct LibpcapSource {
    iface: String,
    capture: pcap::Capture<pcap::Active>,
    linktype: i32,
    /// Written by [`Waker`]s; readable until a wait answers [`Next::Woken`].
    wake: std::sync::Arc<rustix::fd::OwnedFd>,
    /// The read timeout, which is also the kernel's block timeout (how long a packet can sit
    /// in a partly filled block): how long a wait lasts while attentive; zero: until a packet
    /// or a wake.
    block_timeout: Duration,
    /// How long a wait lasts otherwise.
    idle: Duration,
    /// Waits last at most `block_timeout` until then.
    attentive_until: Option<Instant>,
    /// The last read found the ring empty: wait before reading again.
    drained: bool,
}

/// How a wait ended.
enum Waited {
    Ready,
    Woken,
    TimedOut,
}

impl LibpcapSource {
    /// Opens `iface` (errors are the caller's to report: a missing interface, no permission).
    pub fn open(iface: &str, options: &OpenOptions) -> Result<Self, CaptureError> {
        let open = || {
            pcap::Capture::from_device(iface)?
                .promisc(options.promisc)
                .snaplen(options.snaplen as i32)
                .buffer_size(options.buffer_size as i32)
                .timeout(options.timeout_ms)
                .immediate_mode(false)
                .precision(pcap::Precision::Nano)
                .open()?
                .setnonblock()
        };
        let capture = open().map_err(|source| CaptureError::Open { iface: iface.to_string(), source })?;
        let linktype = capture.get_datalink().0;
        let flags = rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC;
        let wake = rustix::event::eventfd(0, flags).map_err(|e| CaptureError::Open {
            iface: iface.to_string(),
            source: pcap::Error::IoError(std::io::Error::from(e).kind()),
        })?;
        let block_timeout = Duration::from_millis(u64::from(options.timeout_ms.max(0).unsigned_abs()));
        let idle = Duration::from_millis(u64::from(options.idle_ms));
        let wake = std::sync::Arc::new(wake);
        Ok(Self {
            iface: iface.to_string(),
            capture,
            linktype,
            wake,
            block_timeout,
            idle,
            attentive_until: None,
            drained: true,
        })
    }

    /// Waits until the ring has a block to read, a wake, or the timeout.
    fn wait(&mut self) -> Waited {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut fds = [PollFd::new(&self.capture, PollFlags::IN), PollFd::new(&*self.wake, PollFlags::IN)];
        let limit = wait_limit(self.block_timeout, self.idle, self.attentive_until);
        let timeout = (!self.block_timeout.is_zero()).then(|| rustix::event::Timespec {
            tv_sec: limit.as_secs() as i64,
            tv_nsec: i64::from(limit.subsec_nanos()),
        });
        match poll(&mut fds, timeout.as_ref()) {
            Ok(0) => Waited::TimedOut,
            Ok(_) if fds[1].revents().contains(PollFlags::IN) => {
                let mut count = [0u8; 8];
                let _ = rustix::io::read(&*self.wake, &mut count);
                Waited::Woken
            }
            Ok(_) => Waited::Ready,
            // Interrupted by a signal: answered like a wake (not a timeout, which says the ring
            // had nothing: it may have a block ready that this wait did not look at).
            Err(_) => Waited::Woken,
        }
    }
}

impl CaptureSource for LibpcapSource {
    fn linktype(&self) -> i32 {
        self.linktype
    }

    fn set_filter(&mut self, expr: &str) -> Result<(), CaptureError> {
        if expr.is_empty() {
            return Ok(());
        }
        self.capture.filter(expr, true).map_err(|source| CaptureError::Compile { expr: expr.to_string(), source })
    }

    fn next(&mut self) -> Result<Next<'_>, CaptureError> {
        if self.drained {
            match self.wait() {
                Waited::Ready => self.drained = false,
                // Whoever woke it may want to know whether the ring is dry now: the next read
                // looks without waiting, and waits stay short for a while.
                Waited::Woken => {
                    self.drained = false;
                    self.attend(ATTENTIVE);
                    return Ok(Next::Woken);
                }
                Waited::TimedOut => return Ok(Next::Timeout),
            }
        }
        match self.capture.next_packet() {
            Ok(packet) => {
                let ts = packet.header.ts;
                // Nanosecond precision was requested: tv_usec holds nanoseconds.
                let ts_ns = (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_usec as u64;
                Ok(Next::Packet(PacketRef { ts_ns, orig_len: packet.header.len, data: packet.data }))
            }
            // Nothing more in the ring for now: the next call waits for it.
            Err(pcap::Error::TimeoutExpired) => {
                self.drained = true;
                Ok(Next::Timeout)
            }
            Err(source) => Err(CaptureError::Read { iface: self.iface.clone(), source }),
        }
    }

    fn stats(&mut self) -> Option<SourceStats> {
        self.capture.stats().ok().map(|s| SourceStats {
            received: u64::from(s.received),
            dropped: u64::from(s.dropped) + u64::from(s.if_dropped),
        })
    }

    fn waker(&self) -> Waker {
        let wake = self.wake.clone();
        Waker::new(move || {
            let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
        })
    }

    fn attend(&mut self, for_: Duration) {
        super::extend_attention(&mut self.attentive_until, for_);
    }

    fn lag(&self) -> Duration {
        // Without a read timeout the kernel retires the ring's blocks on its own timer (8 ms
        // by default): a ring always has some lag.
        if self.block_timeout.is_zero() { KERNEL_BLOCK_TIMEOUT } else { self.block_timeout }
    }
}

/// The ring's block timeout the kernel picks when libpcap asks for none
/// (`DEFAULT_PRB_RETIRE_TOV`).
const KERNEL_BLOCK_TIMEOUT: Duration = Duration::from_millis(8);
