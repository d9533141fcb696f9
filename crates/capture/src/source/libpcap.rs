//! The production source: a libpcap handle on a real interface.
//!
//! Handles are **not** in immediate mode: the kernel hands packets over a ring block at a time
//! (TPACKET_V3), one wakeup per block or per timeout, not one per packet. Timestamps are
//! nanoseconds. The filter runs in the kernel.

use super::{CaptureSource, Next, OpenOptions, PacketRef, SourceFactory, SourceStats, Waker};
use crate::CaptureError;

/// Opens [`LibpcapSource`]s.
#[derive(Debug, Default)]
pub struct Libpcap;

impl SourceFactory for Libpcap {
    fn open(&self, iface: &str, options: &OpenOptions) -> Result<Box<dyn CaptureSource>, CaptureError> {
        Ok(Box::new(LibpcapSource::open(iface, options)?))
    }
}

/// A libpcap capture handle.
pub struct LibpcapSource {
    iface: String,
    capture: pcap::Capture<pcap::Active>,
    linktype: i32,
    breaker: std::sync::Arc<pcap::BreakLoop>,
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
                .open()
        };
        let mut capture = open().map_err(|source| CaptureError::Open { iface: iface.to_string(), source })?;
        let linktype = capture.get_datalink().0;
        let breaker = std::sync::Arc::new(capture.breakloop_handle());
        Ok(Self { iface: iface.to_string(), capture, linktype, breaker })
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
        match self.capture.next_packet() {
            Ok(packet) => {
                let ts = packet.header.ts;
                // Nanosecond precision was requested: tv_usec holds nanoseconds.
                let ts_ns = (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_usec as u64;
                Ok(Next::Packet(PacketRef { ts_ns, orig_len: packet.header.len, data: packet.data }))
            }
            Err(pcap::Error::TimeoutExpired) => Ok(Next::Timeout),
            // pcap_breakloop, from a Waker.
            Err(pcap::Error::NoMorePackets) => Ok(Next::Woken),
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
        let breaker = self.breaker.clone();
        Waker::new(move || breaker.breakloop())
    }

    fn may_block(&self) -> bool {
        true
    }
}
