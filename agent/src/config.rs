//! What an agent is told at start, and who it is (read from its own certificate).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use edgecap_capture::source::SourceConfig;
use edgecap_capture::{LookbackCaptureConfig, LookbackConfig};
use edgecap_tls::{PeerIdentity, TlsFiles};
use rustls_pki_types::pem::PemObject;

/// What an agent is told at start (the binaries build it from their flags).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Coordinator endpoints, `https://host:port` (see `connection.rs` for how one is picked).
    pub coordinators: Vec<String>,
    /// CA, certificate and key; the certificate names the agent and its PoP.
    pub tls: TlsFiles,
    /// How often the TLS files are checked for changes (a change re-dials with them).
    pub tls_reload_interval: Duration,
    /// Where packets come from: libpcap on real interfaces (production), or a replay.
    pub source: SourceConfig,
    /// The interfaces the lookback captures on, and how.
    pub capture: LookbackCaptureConfig,
    /// Sampling, truncation and bounds of the lookback.
    pub lookback: LookbackConfig,
    /// First wait before re-dialling after a failed or closed session.
    pub backoff_min: Duration,
    /// Longest wait between dials (the wait doubles up to it).
    pub backoff_max: Duration,
    /// The clock clock probes are stamped with: the system's (tests and simulated agents
    /// skew it, with the replay source's clock, to stand for a PoP whose clock is off).
    pub clock: crate::clock::AgentClock,
    /// How the agent orders its coordinator endpoints.
    pub endpoint_order: EndpointOrder,
    /// How often (on average; spread over half to one and a half times) an agent connected to
    /// a replica other than its first choice checks whether a preferred one is back.
    pub rebalance_interval: Duration,
    /// How often the lookback's counters are sent up.
    pub heartbeat: Duration,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (plain HTTP; `None`: no listener).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Enroll and renew the certificate (`None`: `tls` holds one made by hand).
    pub enroll: Option<EnrollConfig>,
    /// Full captures: spool and shard settings (`None`: this agent refuses full captures).
    pub full: Option<FullCaptureConfig>,
}

impl AgentConfig {
    /// Defaults for everything but where to dial, who the agent is, and its interfaces.
    pub fn new(coordinators: Vec<String>, tls: TlsFiles, interfaces: Vec<String>) -> Self {
        Self {
            coordinators,
            tls,
            tls_reload_interval: Duration::from_secs(5),
            source: SourceConfig::Libpcap,
            capture: LookbackCaptureConfig { interfaces, ..LookbackCaptureConfig::default() },
            lookback: LookbackConfig::default(),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            rebalance_interval: Duration::from_secs(60),
            endpoint_order: EndpointOrder::Spread,
            clock: crate::clock::AgentClock::default(),
            full: None,
            enroll: None,
            metrics_listen: None,
        }
    }
}

/// The order an agent tries its coordinator endpoints in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointOrder {
    /// Its own order (rendezvous hashing of its id): a fleet spreads evenly over the
    /// replicas, and moves back to its first choice when that replica returns.
    #[default]
    Spread,
    /// As listed: the first endpoint first, the others in turn when it fails.
    Listed,
}

/// Who an enrolling agent asks to be, and with what (see `enroll.rs`).
#[derive(Clone, Debug)]
pub struct EnrollConfig {
    /// The agent's id in its certificate.
    pub agent_id: String,
    /// The PoP it asks to capture for (the token must allow it).
    pub pop: String,
    /// The bootstrap token, one line (needed only when there is no valid certificate yet).
    pub bootstrap_token_file: Option<PathBuf>,
}

/// Full-capture settings of one agent.
#[derive(Clone, Debug)]
pub struct FullCaptureConfig {
    /// Where shards wait for upload (one directory per capture; survives restarts).
    pub spool_dir: PathBuf,
    /// Captures stop when the spool holds more than this.
    pub spool_max_bytes: u64,
    /// Shards rotate at this size or age (unless the job says otherwise), so they upload
    /// while the capture runs.
    pub rotate_bytes: u64,
    /// Shards also rotate at this age, seconds.
    pub rotate_seconds: u32,
    /// libpcap kernel buffer.
    pub buffer_bytes: u32,
    /// How long finished captures are remembered (and re-reported after reconnects).
    pub keep_finished: Duration,
    /// A capture feeds the lookback of its interface while it runs, so each packet is
    /// copied from the kernel once (`edgecap_capture::live`); off: two rings.
    pub feed_lookback: bool,
}

impl FullCaptureConfig {
    /// Defaults (4 GiB spool, 64 MiB / 5 s shards, 32 MiB kernel buffer) for `spool_dir`.
    pub fn new(spool_dir: PathBuf) -> Self {
        Self {
            spool_dir,
            spool_max_bytes: 4 << 30,
            rotate_bytes: 64 << 20,
            rotate_seconds: 5,
            buffer_bytes: 32 << 20,
            keep_finished: Duration::from_secs(3600),
            feed_lookback: true,
        }
    }
}

/// Reads the agent id and PoP from the agent's own certificate.
pub fn own_identity(files: &TlsFiles) -> anyhow::Result<(String, String)> {
    let der = rustls_pki_types::CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("read {}", files.cert.display()))?
        .next()
        .with_context(|| format!("{}: no certificate", files.cert.display()))?
        .with_context(|| format!("{}: bad certificate", files.cert.display()))?;
    match edgecap_tls::peer_identity(&der)? {
        PeerIdentity::Agent { agent_id, pop } => Ok((agent_id, pop)),
        other => anyhow::bail!("{}: {other:?} is not an agent certificate", files.cert.display()),
    }
}
