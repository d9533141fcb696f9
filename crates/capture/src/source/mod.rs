//! Where packets come from: the [`CaptureSource`] seam.
//!
//! Everything that captures (the lookback in [`crate::live`], live captures in
//! [`crate::session`]) reads packets through this trait, so the agent never names libpcap. Two
//! implementations:
//!
//! * [`libpcap::LibpcapSource`]: a real interface, through libpcap (TPACKET_V3 ring, kernel
//!   BPF filter, kernel drop counters). What agents run in production.
//! * [`replay::ReplaySource`]: packets from a pcap file (or generated ones) played at a given
//!   rate, looping, stamped with the current time. For demos, and for the simulated agents of
//!   the scale benchmarks (`edgecap-bench simulate`): the whole agent runs, only the wire is
//!   replaced.
//!
//! The implementation is chosen in exactly one place: [`factory`], from a [`SourceConfig`].

use std::fmt;
use std::sync::Arc;

use crate::CaptureError;

pub mod libpcap;
pub mod replay;

/// Largest snap length any source accepts (libpcap's `MAXIMUM_SNAPLEN`), and the default of
/// full captures: whole packets.
pub const MAX_SNAPLEN: u32 = 262_144;

/// How to open a source on one interface.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Bytes kept of each packet.
    pub snaplen: u32,
    /// Kernel buffer, bytes (libpcap).
    pub buffer_size: u32,
    /// Promiscuous mode (libpcap; a replay source ignores it).
    pub promisc: bool,
    /// Longest a call to [`CaptureSource::next`] waits before answering [`Next::Timeout`]
    /// while the source is attentive (0: until a packet or a wake); for libpcap also the
    /// kernel's ring block timeout, so packets are readable at most this long after arrival.
    pub timeout_ms: i32,
    /// Longest a wait lasts otherwise, ms (never shorter than `timeout_ms`). A quiet source
    /// wakes its thread this often instead of every `timeout_ms`: packets still wake it at
    /// once, and whoever needs a fresh [`Next::Timeout`] (the lookback's queries, which learn
    /// from it that the interface ran dry) wakes it, which makes it attentive for
    /// [`ATTENTIVE`].
    pub idle_ms: u32,
}

/// Default [`OpenOptions::idle_ms`].
pub const IDLE_MS: u32 = 1000;

/// How long a source stays attentive after a wake: waits last at most
/// [`OpenOptions::timeout_ms`]. Longer than a sample query waits for the lookback to settle.
pub const ATTENTIVE: std::time::Duration = std::time::Duration::from_millis(250);

impl Default for OpenOptions {
    fn default() -> Self {
        Self { snaplen: MAX_SNAPLEN, buffer_size: 32 << 20, promisc: true, timeout_ms: 100, idle_ms: IDLE_MS }
    }
}

/// Keeps a source attentive for at least `for_` from now.
pub(crate) fn extend_attention(attentive_until: &mut Option<std::time::Instant>, for_: std::time::Duration) {
    let until = std::time::Instant::now() + for_;
    *attentive_until = Some(attentive_until.map_or(until, |t| t.max(until)));
}

/// How long the next wait of a source may last: `timeout` while attentive (or when it is at
/// least `idle`), else `idle`.
pub(crate) fn wait_limit(
    timeout: std::time::Duration,
    idle: std::time::Duration,
    attentive_until: Option<std::time::Instant>,
) -> std::time::Duration {
    if attentive_until.is_some_and(|until| std::time::Instant::now() < until) { timeout } else { idle.max(timeout) }
}

/// One packet, borrowed from the source until the next call.
#[derive(Clone, Copy, Debug)]
pub struct PacketRef<'a> {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Length on the wire.
    pub orig_len: u32,
    /// The captured bytes (at most the snap length).
    pub data: &'a [u8],
}

/// What a read gave.
#[derive(Debug)]
pub enum Next<'a> {
    /// A packet that passed the filter.
    Packet(PacketRef<'a>),
    /// Nothing to read: nothing arrived within the timeout, or (libpcap) the ring just ran
    /// dry, and the next call waits.
    Timeout,
    /// [`Waker::wake`] was called.
    Woken,
}

/// Counters of the source itself (for libpcap: `pcap_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Packets that passed the filter (libpcap's `ps_recv`).
    pub received: u64,
    /// Packets lost before they could be read (`ps_drop + ps_ifdrop`).
    pub dropped: u64,
}

/// Interrupts a blocked [`CaptureSource::next`] from another thread; cheap to clone.
#[derive(Clone)]
pub struct Waker(Arc<dyn Fn() + Send + Sync>);

impl Waker {
    /// A waker that calls `wake`. It is called from other threads, possibly several times
    /// for one read, and must not block.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Arc::new(wake))
    }

    /// Makes the source's current or next read answer [`Next::Woken`]; the read after that
    /// looks again without waiting, and the source stays attentive for [`ATTENTIVE`].
    pub fn wake(&self) {
        (self.0)()
    }
}

impl fmt::Debug for Waker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Waker")
    }
}

/// A source of packets on one interface, read from one thread.
pub trait CaptureSource: Send {
    /// The link type (a libpcap DLT value) of the packets.
    fn linktype(&self) -> i32;
    /// Only packets matching `expr` (already validated pcap-filter text; see [`crate::bpf`])
    /// are returned from now on. Empty: every packet.
    fn set_filter(&mut self, expr: &str) -> Result<(), CaptureError>;
    /// The next packet, or why there is none now. An error ends the capture.
    fn next(&mut self) -> Result<Next<'_>, CaptureError>;
    /// Counters so far (`None` if the source cannot say now).
    fn stats(&mut self) -> Option<SourceStats>;
    /// A handle that interrupts [`CaptureSource::next`].
    fn waker(&self) -> Waker;
    /// Waits last at most [`OpenOptions::timeout_ms`] for `for_` from now (see
    /// [`OpenOptions::idle_ms`]).
    fn attend(&mut self, for_: std::time::Duration);
    /// How long before a read that answered [`Next::Timeout`] a packet may have arrived and
    /// still not be readable (libpcap: a partly filled ring block is handed over after the
    /// read timeout). Everything older has been read.
    fn lag(&self) -> std::time::Duration;
}

/// Opens sources; one per agent, shared by its lookback and its live captures.
pub trait SourceFactory: fmt::Debug + Send + Sync {
    /// Opens a source on `iface`. Failures are the caller's to report: for libpcap, a
    /// missing interface or no permission ([`CaptureError::Open`]); for a replay, a file that
    /// cannot be read ([`CaptureError::Replay`]).
    fn open(&self, iface: &str, options: &OpenOptions) -> Result<Box<dyn CaptureSource>, CaptureError>;
}

/// Which [`SourceFactory`] an agent uses.
#[derive(Clone, Debug, Default)]
pub enum SourceConfig {
    /// Real interfaces, through libpcap.
    #[default]
    Libpcap,
    /// Replayed or generated packets (every interface name gives the same stream).
    Replay(replay::ReplayConfig),
}

/// The one place a capture source implementation is chosen.
pub fn factory(config: &SourceConfig) -> Arc<dyn SourceFactory> {
    match config {
        SourceConfig::Libpcap => Arc::new(libpcap::Libpcap),
        SourceConfig::Replay(replay) => Arc::new(replay::Replay::new(replay.clone())),
    }
}
