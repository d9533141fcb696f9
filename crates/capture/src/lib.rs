//! The capture engine: live libpcap capture, safe filters, and the sampled lookback.
//!
//! * [`filter`]: the typed `filter_v1` and its translation to BPF. Only validated tokens
//!   (parsed IP addresses and prefixes, integers in range) are ever written into filter
//!   text; no user string reaches libpcap, a shell or a command line.
//! * [`lookback`]: an always-on, time-ordered store of sampled, truncated packets, bounded by
//!   memory and age, answering "packets in `[from, to]` matching F, newest N".
//! * [`source`]: where packets come from ([`source::CaptureSource`]): libpcap on a real
//!   interface, or a replayed file for demos and simulated agents; chosen in
//!   [`source::factory`]. Nothing outside this crate opens libpcap.
//! * [`live`]: one source and thread per interface feeding the lookback.
//! * [`session`]: live captures with limits, a bounded queue and loss accounting.
//! * [`records`]: the batches between a live capture's threads, packets already framed as
//!   their sink's file records.
//! * [`shard`]: rotating shard files (pcap or pcapng) with manifests; their disk blocks
//!   reserved ahead of the writes (`reserving`).
//! * [`bpf`]: user pcap-filter text, compiled, bounded and hashed.
//!
//! No async runtime in here: capture runs on its own OS threads.

pub mod bpf;
mod deadlines;
pub mod filter;
pub mod live;
pub mod lookback;
pub mod offline;
pub mod records;
mod reserving;
pub mod scope;
pub mod session;
pub mod shard;
pub mod source;
pub mod summary;

pub use filter::{FilterError, FilterV1, IpPrefix};
pub use live::{LookbackCapture, LookbackCaptureConfig};
pub use lookback::{Lookback, LookbackConfig, LookbackStats, SampledPacket, StoredPacket};

/// Why a capture could not be opened, filtered, started or read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// libpcap could not open the interface: it does not exist, the process may not capture
    /// on it, or an option was refused.
    #[error("interface {iface}: {source}")]
    Open {
        /// The interface name, as given.
        iface: String,
        /// libpcap's error.
        source: pcap::Error,
    },
    /// libpcap refused a pcap-filter expression for the link type (or could not create the
    /// handle to compile it on).
    #[error("filter {expr:?} does not compile: {source}")]
    Compile {
        /// The expression, as given.
        expr: String,
        /// libpcap's error.
        source: pcap::Error,
    },
    /// Reading from an open interface failed (not a timeout or a wake); it ends the capture.
    #[error("capture on {iface}: {source}")]
    Read {
        /// The interface name.
        iface: String,
        /// libpcap's error.
        source: pcap::Error,
    },
    /// A replay file could not be opened or parsed, has no interface description (pcapng), or
    /// holds no packet. The message starts with the file's path.
    #[error("replay source: {0}")]
    Replay(String),
    /// The OS refused to spawn a capture, writer or (the first time) deadline thread.
    #[error("could not start a capture thread: {0}")]
    Thread(std::io::Error),
    /// A `filter_v1` was refused.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

pub(crate) use edgecap_common::hex;
pub use edgecap_common::now_ns;

/// Compiles `expr` for a link type (a libpcap DLT value, as `pcap_datalink` returns), for offline matching (`pcap_offline_filter`), so a filter
/// means the same in the lookback as on the wire.
pub fn compile_offline(linktype: i32, snaplen: i32, expr: &str) -> Result<pcap::BpfProgram, CaptureError> {
    let dead = pcap::Capture::dead_with_precision(pcap::Linktype(linktype), pcap::Precision::Nano)
        .map_err(|source| CaptureError::Compile { expr: expr.to_string(), source })?;
    let _ = snaplen;
    dead.compile(expr, true).map_err(|source| CaptureError::Compile { expr: expr.to_string(), source })
}
