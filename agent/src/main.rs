//! `edgecap-agent`: the PoP agent (`run`) and a standalone capture command (`capture`) for
//! operators.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use edgecap_agent::standalone::{CaptureArgs, UsageError};
use edgecap_agent::{Agent, AgentConfig};
use edgecap_capture::LookbackConfig;
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
    Capture(CaptureCommand),
}

#[derive(Args, Debug)]
struct CaptureCommand {
    #[command(flatten)]
    args: CaptureArgs,
    /// Deprecated: moved to `edgecap-bench capture --with-lookback` (run through it when it is
    /// installed beside this binary).
    #[arg(long, hide = true)]
    with_lookback: bool,
    /// Deprecated: moved to `edgecap-bench capture --lookback-sample-rate`.
    #[arg(long, hide = true)]
    lookback_sample_rate: Option<u32>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Coordinator endpoint, https://host:port. Repeat (or comma-separate) for failover.
    #[arg(long = "coordinator", required = true, env = "EDGECAP_COORDINATORS", value_delimiter = ',')]
    coordinators: Vec<String>,
    /// The order coordinator endpoints are tried in: `spread` (each agent its own order, so a
    /// fleet spreads evenly over the replicas) or `listed` (the first one first).
    #[arg(long, value_enum, default_value_t = edgecap_agent::EndpointOrder::Spread)]
    coordinator_order: edgecap_agent::EndpointOrder,
    /// Interface to capture on. Repeatable.
    #[arg(long = "iface", default_value = "lo")]
    interfaces: Vec<String>,
    /// CA certificate.
    #[arg(long, env = "EDGECAP_TLS_CA")]
    tls_ca: PathBuf,
    /// This agent's certificate (its PoP and id are read from it). Enrolling agents write
    /// it here; default /var/lib/edgecap/pki/agent.pem.
    #[arg(long, env = "EDGECAP_TLS_CERT", default_value = "/var/lib/edgecap/pki/agent.pem")]
    tls_cert: PathBuf,
    /// This agent's key (enrolling agents make it here); default
    /// /var/lib/edgecap/pki/agent-key.pem.
    #[arg(long, env = "EDGECAP_TLS_KEY", default_value = "/var/lib/edgecap/pki/agent-key.pem")]
    tls_key: PathBuf,
    /// Serve Prometheus metrics (`/metrics`) and health checks (`/healthz`, `/readyz`: the
    /// control stream is up) over plain HTTP here, e.g. 0.0.0.0:9441.
    #[arg(long, env = "EDGECAP_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Enroll: the PoP this agent captures for. The agent makes its own key, has it signed
    /// by a coordinator (with --enroll-token-file the first time) and renews it before it
    /// expires; --tls-cert and --tls-key are where they are kept.
    #[arg(long, env = "EDGECAP_POP")]
    pop: Option<String>,
    /// Enroll: this agent's id (default: the host name).
    #[arg(long, env = "EDGECAP_AGENT_ID", requires = "pop")]
    agent_id: Option<String>,
    /// Enroll: a file holding a bootstrap token (`edgecap admin bootstrap-token create`),
    /// needed until the agent has a valid certificate.
    #[arg(long, env = "EDGECAP_ENROLL_TOKEN_FILE", requires = "pop")]
    enroll_token_file: Option<PathBuf>,
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
    /// Keep the lookback's own kernel ring while a full capture runs on its interface. By
    /// default the capture feeds the lookback (one kernel copy per packet instead of two,
    /// its filter then runs in user space); a very selective capture filter on a busy
    /// interface can cost less with two rings.
    #[arg(long)]
    separate_lookback_ring: bool,
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
        Command::Capture(command) => {
            if command.with_lookback || command.lookback_sample_rate.is_some() {
                bench_capture();
            }
            let _telemetry = edgecap_telemetry::init("edgecap-agent", None, "info", true)?;
            match edgecap_agent::standalone::capture(command.args, None).await {
                Ok(code) => std::process::exit(code),
                Err(e) => match e.downcast::<UsageError>() {
                    Ok(usage) => usage_error(usage.0),
                    Err(e) => Err(e),
                },
            }
        }
    }
}

/// The benchmark hooks moved to `edgecap-bench capture`: hand the same arguments to it.
fn bench_capture() -> ! {
    eprintln!(
        "edgecap-agent: warning: --with-lookback and --lookback-sample-rate are deprecated; use `edgecap-bench capture`"
    );
    let bench = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("edgecap-bench")));
    let Some(bench) = bench.filter(|b| b.exists()) else {
        usage_error("--with-lookback: edgecap-bench is not installed beside edgecap-agent".into())
    };
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    use std::os::unix::process::CommandExt as _;
    let error = std::process::Command::new(&bench).arg("capture").args(args).exec();
    usage_error(format!("run {}: {error}", bench.display()))
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
    let mut full = edgecap_agent::FullCaptureConfig::new(args.spool_dir);
    full.spool_max_bytes = args.spool_max_mib.max(1) << 20;
    full.rotate_bytes = args.shard_rotate_mib.max(1) << 20;
    full.rotate_seconds = args.shard_rotate_seconds.max(1);
    full.feed_lookback = !args.separate_lookback_ring;
    config.full = Some(full);
    config.metrics_listen = args.metrics_listen;
    config.endpoint_order = args.coordinator_order;
    if let Some(pop) = args.pop {
        edgecap_tls::validate_name(&pop).unwrap_or_else(|e| usage_error(format!("--pop: {e}")));
        let agent_id = match args.agent_id {
            Some(id) => id,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().split('.').next().unwrap_or_default().to_string())
                .unwrap_or_default(),
        };
        edgecap_tls::validate_name(&agent_id)
            .unwrap_or_else(|e| usage_error(format!("--agent-id: {agent_id:?}: {e} (the host name is the default)")));
        config.enroll =
            Some(edgecap_agent::EnrollConfig { agent_id, pop, bootstrap_token_file: args.enroll_token_file });
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let signal = tokio::spawn(async move {
            edgecap_common::shutdown_signal().await;
            stop.cancel();
        });
        let enrolled = edgecap_agent::enroll::ensure_certificate(&config, &cancel).await;
        signal.abort();
        enrolled.unwrap_or_else(|e| usage_error(format!("{e:#}")));
    }
    let agent = Agent::start(config).unwrap_or_else(|e| usage_error(format!("{e:#}")));
    tracing::info!(agent_id = %agent.agent_id, pop = %agent.pop, "agent started");
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let agent = tokio::spawn(agent.run(cancel));
    edgecap_common::shutdown_signal().await;
    stop.cancel();
    agent.await?
}
