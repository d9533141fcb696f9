//! `edgecap-agent capture`: capture on one interface into a file (or rotating shards) and
//! print what was captured and lost, without a coordinator. The same capture engine and
//! shard writer a full capture uses.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use edgecap_capture::FilterV1;
use edgecap_capture::session::{Limits, LiveCapture, LiveConfig};
use edgecap_capture::shard::{ShardChecksum, ShardConfig, ShardFormat, ShardIdentity, ShardWriter};
use edgecap_capture::source::{MAX_SNAPLEN, SourceConfig};

/// The file format of `--format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// Classic pcap, nanosecond timestamps.
    Pcap,
    /// pcapng with the interface's name and filter, and drop counters.
    Pcapng,
}

/// The shard checksum of `--checksum`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Checksum {
    /// CRC32C of each shard file, whole and by 8 MiB part, in its manifest (what agents
    /// compute for full captures: S3 verifies it on upload).
    Crc32c,
    /// SHA-256 of each shard file, in its manifest.
    Sha256,
    /// No checksum (the manifest says `crc32c: null` and `sha256: null`).
    None,
}

/// The flags of `edgecap-agent capture`.
#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Interface to capture on.
    #[arg(long)]
    pub iface: String,
    /// Output file (with rotation: the name pattern, numbered -000001, -000002, ...).
    #[arg(long)]
    pub out: PathBuf,
    /// pcap-filter expression (compiled by libpcap, at most 4096 instructions).
    #[arg(long, conflicts_with = "filter_v1")]
    pub filter: Option<String>,
    /// Cloudflare filter_v1 as JSON, e.g. '{"protocol":17,"destination_port":53}'.
    #[arg(long)]
    pub filter_v1: Option<String>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Stop after this many packets.
    #[arg(long)]
    pub packet_limit: Option<u64>,
    /// Stop before the captured packet bytes would exceed this.
    #[arg(long)]
    pub byte_limit: Option<u64>,
    /// Bytes kept of each packet.
    #[arg(long, default_value_t = MAX_SNAPLEN)]
    pub snaplen: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "pcap")]
    pub format: Format,
    /// Kernel capture buffer, MiB.
    #[arg(long, default_value_t = 32)]
    pub buffer_mib: u32,
    /// Rotate to a new shard at this size, MiB.
    #[arg(long)]
    pub rotate_mib: Option<u64>,
    /// Rotate to a new shard after this many seconds.
    #[arg(long)]
    pub rotate_seconds: Option<u64>,
    /// Identity written into shard manifests and pcapng interface names.
    #[arg(long, default_value = "local")]
    pub pop: String,
    /// Agent id written into shard manifests.
    #[arg(long, default_value = "edgecap-agent")]
    pub agent: String,
    /// Capture id written into shard manifests.
    #[arg(long, default_value = "")]
    pub capture_id: String,
    /// Shard checksum written into the manifest: crc32c (default, as agents do for full
    /// captures), sha256 or none.
    #[arg(long, value_enum, default_value = "crc32c")]
    pub checksum: Checksum,
    /// Batches the queue between the capture and writer threads holds (x1024 packets).
    #[arg(long, default_value_t = 256, hide = true)]
    pub queue_batches: usize,
    /// Test hook: slow the writer by this many microseconds per packet.
    #[arg(long, hide = true)]
    pub writer_delay_us: Option<u64>,
}

/// A usage error: the message, for a one-line `edgecap-agent: ...` and exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The filter text to compile: from --filter (checked by libpcap, bounded) or from
/// --filter-v1 (typed fields only); and its bytecode hash.
fn capture_filter(args: &CaptureArgs) -> Result<(String, String), UsageError> {
    let text = match (&args.filter, &args.filter_v1) {
        (Some(f), _) => f.clone(),
        (None, Some(json)) => {
            let filter: FilterV1 = serde_json::from_str(json).map_err(|e| UsageError(format!("--filter-v1: {e}")))?;
            filter.check_satisfiable().map_err(|e| UsageError(format!("--filter-v1: {e}")))?;
            filter.to_bpf()
        }
        (None, None) => String::new(),
    };
    if text.is_empty() {
        return Ok((text, String::new()));
    }
    // The link type is checked against the interface's when the filter is set; the hash names
    // the program for manifests.
    let checked =
        edgecap_capture::bpf::check(&text, 1, args.snaplen as i32).map_err(|e| UsageError(format!("--filter: {e}")))?;
    Ok((checked.text, checked.hash))
}

/// Something a caller runs beside the capture (the benchmarks' lookback).
pub struct Alongside {
    /// The lookback's feed of the capture's interface, for the capture to take over (see
    /// `edgecap_capture::live`); `None`: the lookback keeps its own ring.
    pub feed: Option<std::sync::Arc<edgecap_capture::live::Feed>>,
    /// Stops it when the capture ends; its summary line is printed.
    pub stop: Box<dyn FnOnce() -> String + Send>,
}

/// Runs the capture until a limit, a failure, or SIGTERM/Ctrl-C. Returns the exit code:
/// 0, or 1 when the capture failed. Bad flags are a [`UsageError`].
pub async fn capture(args: CaptureArgs, alongside: Option<Alongside>) -> anyhow::Result<i32> {
    let (filter, filter_hash) = capture_filter(&args)?;
    if let Some(t) = args.time_limit
        && !(t > 0.0 && t.is_finite())
    {
        return Err(UsageError("--time-limit must be a positive number of seconds".into()).into());
    }
    if !(16..=MAX_SNAPLEN).contains(&args.snaplen) {
        return Err(UsageError(format!("--snaplen must be 16..={MAX_SNAPLEN}")).into());
    }
    let mut config = LiveConfig::new(&args.iface, &filter);
    config.snaplen = args.snaplen;
    config.buffer_size = args.buffer_mib.clamp(1, 2048) << 20;
    config.queue_batches = args.queue_batches.max(1);
    config.writer_delay = args.writer_delay_us.map(Duration::from_micros);
    config.feed = alongside.as_ref().and_then(|a| a.feed.clone());
    config.limits = Limits {
        allowance: None,
        time: args.time_limit.map(Duration::from_secs_f64),
        packets: args.packet_limit,
        bytes: args.byte_limit,
    };
    let sources = edgecap_capture::source::factory(&SourceConfig::Libpcap);
    // The link type comes from the interface itself.
    let options = config.open_options();
    let iface = args.iface.clone();
    let source = tokio::task::spawn_blocking(move || sources.open(&iface, &options))
        .await?
        .map_err(|e| UsageError(format!("--iface: {e}")))?;
    let identity = ShardIdentity {
        capture_id: args.capture_id.clone(),
        pop: args.pop.clone(),
        agent: args.agent.clone(),
        interface: args.iface.clone(),
        linktype: source.linktype() as u16,
        snaplen: args.snaplen,
        filter: filter.clone(),
        filter_hash,
    };
    let shards = ShardWriter::new(
        ShardConfig {
            path: args.out.clone(),
            format: match args.format {
                Format::Pcap => ShardFormat::Pcap,
                Format::Pcapng => ShardFormat::Pcapng,
            },
            rotate_bytes: args.rotate_mib.map(|m| m << 20),
            rotate_every: args.rotate_seconds.map(Duration::from_secs),
            checksum: match args.checksum {
                Checksum::Crc32c => ShardChecksum::Crc32c,
                Checksum::Sha256 => ShardChecksum::Sha256,
                Checksum::None => ShardChecksum::None,
            },
        },
        identity,
    );
    let live = LiveCapture::start(config, source, Box::new(shards)).map_err(|e| UsageError(e.to_string()))?;
    eprintln!("edgecap-agent: capturing on {} (filter {:?})", args.iface, filter);
    let stopper = live.stop_handle();
    let counters = tokio::task::spawn_blocking(move || live.wait());
    tokio::pin!(counters);
    let counters = tokio::select! {
        counters = &mut counters => counters?,
        _ = edgecap_common::shutdown_signal() => {
            stopper.stop();
            counters.await?
        }
    };
    if let Some(alongside) = alongside {
        eprintln!("{}", tokio::task::spawn_blocking(alongside.stop).await?);
    }
    println!("{}", counters.line());
    eprintln!("{} packets captured", counters.written);
    eprintln!("{} packets received by filter", counters.received);
    eprintln!("{} packets dropped by kernel", counters.kernel_dropped);
    match counters.stop_reason {
        Some(edgecap_capture::session::StopReason::Failed(e)) => {
            eprintln!("edgecap-agent: capture failed: {e}");
            Ok(1)
        }
        _ => Ok(0),
    }
}
