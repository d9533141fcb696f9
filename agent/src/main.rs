//! `edgecap-agent`: the PoP agent (`run`) and a standalone capture command (`capture`) for
//! operators and benchmarks.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use edgecap_agent::{Agent, AgentConfig};
use edgecap_capture::session::{Limits, LiveCapture, LiveConfig};
use edgecap_capture::shard::{ShardConfig, ShardFormat, ShardIdentity, ShardWriter};
use edgecap_capture::{FilterV1, LookbackConfig};
use edgecap_tls::TlsFiles;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(version, about = "The edgecap agent: lookback, captures, and the coordinator's control stream")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run as a PoP agent: keep the sampled lookback and serve the coordinator.
    Run(RunArgs),
    /// Capture on an interface into a file, then print the counters (no coordinator needed).
    Capture(CaptureArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Coordinator endpoint, https://host:port. Repeat (or comma-separate) for failover.
    #[arg(long = "coordinator", required = true, env = "EDGECAP_COORDINATORS", value_delimiter = ',')]
    coordinators: Vec<String>,
    /// Interface to capture on. Repeatable.
    #[arg(long = "iface", default_value = "lo")]
    interfaces: Vec<String>,
    /// CA certificate.
    #[arg(long, env = "EDGECAP_TLS_CA")]
    tls_ca: PathBuf,
    /// This agent's certificate (its PoP and id are read from it).
    #[arg(long, env = "EDGECAP_TLS_CERT")]
    tls_cert: PathBuf,
    /// This agent's key.
    #[arg(long, env = "EDGECAP_TLS_KEY")]
    tls_key: PathBuf,
    /// Keep 1 packet in N in the lookback.
    #[arg(long, default_value_t = 1)]
    sample_rate: u32,
    /// Bytes kept per lookback packet.
    #[arg(long, default_value_t = 160)]
    lookback_snaplen: u32,
    /// Lookback memory bound, MiB.
    #[arg(long, default_value_t = 64)]
    lookback_memory_mib: usize,
    /// Lookback age bound, seconds (at most 86400).
    #[arg(long, default_value_t = 86400)]
    lookback_max_age: u64,
    /// Export traces over OTLP/gRPC to this collector; also OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, env = "EDGECAP_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Where full-capture shards wait for upload (survives restarts). Full captures run on
    /// the first --iface.
    #[arg(long, env = "EDGECAP_SPOOL_DIR", default_value = "/var/lib/edgecap/spool")]
    spool_dir: PathBuf,
    /// Spool bound, MiB: running full captures stop when the spool holds more.
    #[arg(long, default_value_t = 4096)]
    spool_max_mib: u64,
    /// Full-capture shards rotate at this size (MiB) ...
    #[arg(long, default_value_t = 64)]
    shard_rotate_mib: u64,
    /// ... or this age (seconds), so they upload while the capture runs.
    #[arg(long, default_value_t = 5)]
    shard_rotate_seconds: u32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Pcap,
    Pcapng,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Checksum {
    Sha256,
    None,
}

#[derive(Args, Debug)]
struct CaptureArgs {
    #[arg(long)]
    iface: String,
    /// Output file (with rotation: the name pattern, numbered -000001, -000002, ...).
    #[arg(long)]
    out: PathBuf,
    /// pcap-filter expression (compiled by libpcap, at most 4096 instructions).
    #[arg(long, conflicts_with = "filter_v1")]
    filter: Option<String>,
    /// Cloudflare filter_v1 as JSON, e.g. '{"protocol":17,"destination_port":53}'.
    #[arg(long)]
    filter_v1: Option<String>,
    /// Stop after this many seconds.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Stop after this many packets.
    #[arg(long)]
    packet_limit: Option<u64>,
    /// Stop before the captured packet bytes would exceed this.
    #[arg(long)]
    byte_limit: Option<u64>,
    #[arg(long, default_value_t = 262_144)]
    snaplen: u32,
    #[arg(long, value_enum, default_value = "pcap")]
    format: Format,
    /// Kernel capture buffer, MiB.
    #[arg(long, default_value_t = 32)]
    buffer_mib: u32,
    /// Rotate to a new shard at this size, MiB.
    #[arg(long)]
    rotate_mib: Option<u64>,
    /// Rotate to a new shard after this many seconds.
    #[arg(long)]
    rotate_seconds: Option<u64>,
    /// Identity written into shard manifests and pcapng interface names.
    #[arg(long, default_value = "local")]
    pop: String,
    #[arg(long, default_value = "edgecap-agent")]
    agent: String,
    #[arg(long, default_value = "")]
    capture_id: String,
    /// Shard checksum written into the manifest: sha256 (default) or none.
    #[arg(long, value_enum, default_value = "sha256")]
    checksum: Checksum,
    /// Batches the queue between the capture and writer threads holds (x256 packets).
    #[arg(long, default_value_t = 1024, hide = true)]
    queue_batches: usize,
    /// Test hook: slow the writer by this many microseconds per packet.
    #[arg(long, hide = true)]
    writer_delay_us: Option<u64>,
    /// Benchmark hook: also feed the agent's sampled lookback from this interface (its own
    /// libpcap handle, as in `run`), so the cost of both is measured together.
    #[arg(long, hide = true)]
    with_lookback: bool,
    /// Benchmark hook: the lookback's sample rate with --with-lookback.
    #[arg(long, hide = true, default_value_t = 1)]
    lookback_sample_rate: u32,
}

fn usage_error(message: String) -> ! {
    eprintln!("edgecap-agent: {message}");
    std::process::exit(64);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            let telemetry = edgecap_telemetry::init("edgecap-agent", args.otlp_endpoint.as_deref(), "info", true)?;
            let result = run(args).await;
            telemetry.shutdown();
            result
        }
        Command::Capture(args) => {
            let _telemetry = edgecap_telemetry::init("edgecap-agent", None, "info", true)?;
            capture(args).await
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.lookback_max_age == 0 || args.lookback_max_age > 86400 {
        usage_error("--lookback-max-age must be 1..=86400 seconds".into());
    }
    if !(16..=65535).contains(&args.lookback_snaplen) {
        usage_error("--lookback-snaplen must be 16..=65535".into());
    }
    let mut config = AgentConfig::new(
        args.coordinators,
        TlsFiles { ca: args.tls_ca, cert: args.tls_cert, key: args.tls_key },
        args.interfaces,
    );
    config.lookback = LookbackConfig {
        sample_rate: args.sample_rate.max(1),
        snaplen: args.lookback_snaplen,
        max_bytes: args.lookback_memory_mib << 20,
        max_age_ns: args.lookback_max_age * 1_000_000_000,
    };
    let mut full = edgecap_agent::full::FullCaptureConfig::new(args.spool_dir);
    full.spool_max_bytes = args.spool_max_mib.max(1) << 20;
    full.rotate_bytes = args.shard_rotate_mib.max(1) << 20;
    full.rotate_seconds = args.shard_rotate_seconds.max(1);
    config.full = Some(full);
    let agent = Agent::start(config).unwrap_or_else(|e| usage_error(format!("{e:#}")));
    tracing::info!(agent_id = %agent.agent_id, pop = %agent.pop, "agent started");
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    agent.run(cancel).await
}

/// The filter text to compile: from --filter (checked by libpcap, bounded) or from
/// --filter-v1 (typed fields only).
fn capture_filter(args: &CaptureArgs) -> Result<(String, String), String> {
    let text = match (&args.filter, &args.filter_v1) {
        (Some(f), _) => f.clone(),
        (None, Some(json)) => {
            let filter: FilterV1 = serde_json::from_str(json).map_err(|e| format!("--filter-v1: {e}"))?;
            filter.check_satisfiable().map_err(|e| format!("--filter-v1: {e}"))?;
            filter.to_bpf()
        }
        (None, None) => String::new(),
    };
    if text.is_empty() {
        return Ok((text, String::new()));
    }
    // The link type is checked against the interface's when libpcap sets the filter; the
    // hash names the program for manifests.
    let checked = edgecap_capture::bpf::check(&text, 1, args.snaplen as i32).map_err(|e| e.to_string())?;
    Ok((checked.text, checked.hash))
}

async fn capture(args: CaptureArgs) -> anyhow::Result<()> {
    let (filter, filter_hash) = capture_filter(&args).unwrap_or_else(|e| usage_error(e));
    if let Some(t) = args.time_limit
        && !(t > 0.0 && t.is_finite())
    {
        usage_error("--time-limit must be a positive number of seconds".into());
    }
    if !(16..=262_144).contains(&args.snaplen) {
        usage_error("--snaplen must be 16..=262144".into());
    }
    let mut config = LiveConfig::new(&args.iface, &filter);
    config.snaplen = args.snaplen;
    config.buffer_size = args.buffer_mib.clamp(1, 2048) << 20;
    config.queue_batches = args.queue_batches.max(1);
    config.writer_delay = args.writer_delay_us.map(Duration::from_micros);
    config.limits = Limits {
        time: args.time_limit.map(Duration::from_secs_f64),
        packets: args.packet_limit,
        bytes: args.byte_limit,
    };
    // The link type comes from the interface itself.
    let linktype = pcap::Capture::from_device(args.iface.as_str())
        .and_then(|c| c.open())
        .map(|c| c.get_datalink().0 as u16)
        .unwrap_or_else(|e| usage_error(format!("interface {}: {e}", args.iface)));
    let identity = ShardIdentity {
        capture_id: args.capture_id.clone(),
        pop: args.pop.clone(),
        agent: args.agent.clone(),
        interface: args.iface.clone(),
        linktype,
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
            checksum: matches!(args.checksum, Checksum::Sha256),
        },
        identity,
    );
    let lookback = args.with_lookback.then(|| {
        let lookback = std::sync::Arc::new(std::sync::Mutex::new(edgecap_capture::Lookback::new(LookbackConfig {
            sample_rate: args.lookback_sample_rate.max(1),
            ..LookbackConfig::default()
        })));
        let config =
            edgecap_capture::LookbackCaptureConfig { interfaces: vec![args.iface.clone()], ..Default::default() };
        (
            edgecap_capture::LookbackCapture::start(&config, lookback.clone())
                .unwrap_or_else(|e| usage_error(e.to_string())),
            lookback,
        )
    });
    let live = LiveCapture::start(config, Box::new(shards)).unwrap_or_else(|e| usage_error(e.to_string()));
    eprintln!("edgecap-agent: capturing on {} (filter {:?})", args.iface, filter);
    let stopper = live.stop_handle();
    let signals = tokio::spawn(async move {
        shutdown_signal().await;
        stopper.stop();
    });
    let counters = tokio::task::spawn_blocking(move || live.wait()).await?;
    signals.abort();
    if let Some((capture, lookback)) = lookback {
        capture.stop();
        let l = lookback.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!(
            "lookback: {} packets seen, {} held, {} kernel drops",
            l.stats().packets_seen,
            l.len(),
            l.stats().kernel_dropped
        );
    }
    println!("{}", counters.line());
    eprintln!("{} packets captured", counters.written);
    eprintln!("{} packets received by filter", counters.received);
    eprintln!("{} packets dropped by kernel", counters.kernel_dropped);
    match counters.stop_reason {
        Some(edgecap_capture::session::StopReason::Failed(e)) => {
            eprintln!("edgecap-agent: capture failed: {e}");
            std::process::exit(1);
        }
        _ => Ok(()),
    }
}
