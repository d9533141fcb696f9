//! `edgecap-agent`: the PoP agent as a daemon.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use edgecap_agent::{Agent, AgentConfig};
use edgecap_capture::LookbackConfig;
use edgecap_tls::TlsFiles;
use tokio_util::sync::CancellationToken;

/// The edgecap agent: keeps a sampled lookback of its interfaces and serves the coordinator.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Coordinator endpoint, https://host:port. Repeat for failover.
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,h2=warn,hyper=warn".into()),
        )
        .init();
    let args = Args::parse();
    if args.lookback_max_age == 0 || args.lookback_max_age > 86400 {
        eprintln!("edgecap-agent: --lookback-max-age must be 1..=86400 seconds");
        std::process::exit(64);
    }
    if !(16..=65535).contains(&args.lookback_snaplen) {
        eprintln!("edgecap-agent: --lookback-snaplen must be 16..=65535");
        std::process::exit(64);
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
    config.tls_reload_interval = Duration::from_secs(5);
    let agent = match Agent::start(config) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("edgecap-agent: {e:#}");
            std::process::exit(64);
        }
    };
    tracing::info!(agent_id = %agent.agent_id, pop = %agent.pop, "agent started");
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    agent.run(cancel).await
}
