//! `edgecap up`: a coordinator and one agent in one process, with embedded state, local
//! object storage and a generated PKI, all under `--data-dir`. Restarting with the same
//! directory keeps the captures, the certificates and the credentials.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use edgecap_agent::{Agent, AgentConfig};
use edgecap_capture::LookbackConfig;
use edgecap_coordinator::{Coordinator, CoordinatorConfig, Limits, RateLimits};
use edgecap_state::StateConfig;
use edgecap_storage::StorageConfig;
use edgecap_tls::TlsFiles;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where everything is kept (created if missing).
    #[arg(long, env = "EDGECAP_DATA_DIR")]
    data_dir: PathBuf,
    /// Shared state: `embedded` (under --data-dir) or etcd://HOST:PORT[,HOST:PORT...][/PREFIX].
    #[arg(long, default_value = "embedded")]
    state: String,
    /// API listen address.
    #[arg(long, default_value = "127.0.0.1:9440")]
    listen: SocketAddr,
    /// Agent control listen address (for agents on other machines; the local agent uses it too).
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc_listen: SocketAddr,
    /// Interface(s) the local agent captures on.
    #[arg(long = "iface", default_value = "lo")]
    interfaces: Vec<String>,
    /// The local agent's PoP name.
    #[arg(long, default_value = "local")]
    pop: String,
    /// Account id to use (default: generated once and kept in the data dir).
    #[arg(long)]
    account: Option<String>,
    /// API token for the account (default: generated once and kept in the data dir).
    #[arg(long)]
    token: Option<String>,
    /// Keep 1 packet in N in the local agent's lookback.
    #[arg(long, default_value_t = 1)]
    sample_rate: u32,
    /// Apply Cloudflare's per-account limits (1 sample per minute, 1 active full capture).
    #[arg(long)]
    rate_limits: bool,
    /// Per-bucket S3 credentials for full captures (JSON: {"bucket": {"access_key_id", "secret_access_key"}});
    /// otherwise the AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles).
    #[arg(long)]
    s3_credentials: Option<PathBuf>,
    /// Keep full captures' shards in the bucket after the merge.
    #[arg(long)]
    keep_shards: bool,
    /// Export traces over OTLP/gRPC to this collector; also OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, env = "EDGECAP_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

fn random_hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(n);
    s
}

/// The account, its token and an admin token: flags win, else what the data dir remembers,
/// else new ones.
struct Credentials {
    account: String,
    token: String,
    admin_token: String,
}

fn credentials(dir: &Path, account: Option<String>, token: Option<String>) -> anyhow::Result<Credentials> {
    let path = dir.join("credentials.json");
    let saved: serde_json::Value =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let remembered = |key: &str| saved[key].as_str().map(str::to_string);
    let account = account.or_else(|| remembered("account_id")).unwrap_or_else(|| random_hex(32));
    let token = token.or_else(|| remembered("token")).unwrap_or_else(|| random_hex(40));
    let admin_token = remembered("admin_token").unwrap_or_else(|| random_hex(48));
    anyhow::ensure!(edgecap_coordinator::valid_account(&account), "--account: use 1-32 of [A-Za-z0-9_-]");
    anyhow::ensure!(token.len() >= 16, "--token: use at least 16 characters");
    let body = serde_json::to_vec_pretty(&json!({"account_id": account, "token": token, "admin_token": admin_token}))?;
    write_private(&path, &body)?;
    Ok(Credentials { account, token, admin_token })
}

fn write_private(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(body)?;
    Ok(())
}

/// CA, coordinator and agent certificates under `pki`, made once; a new agent certificate
/// is issued when the PoP changes.
fn ensure_pki(pki: &Path, pop: &str) -> anyhow::Result<(TlsFiles, TlsFiles)> {
    edgecap_tls::validate_name(pop).context("--pop")?;
    if !pki.join("ca.pem").exists() {
        edgecap_tls::pki::init_ca(pki, "edgecap up CA")?;
    }
    let coordinator = TlsFiles::in_dir(pki, "coordinator");
    if !coordinator.cert.exists() {
        edgecap_tls::pki::issue_coordinator(pki, "local", &["localhost".into(), "127.0.0.1".into(), "::1".into()])?;
    }
    let agent_id = format!("{pop}-agent");
    let agent = TlsFiles::in_dir(pki, &format!("agent-{agent_id}"));
    let current = edgecap_agent::own_identity(&agent).ok();
    if current != Some((agent_id.clone(), pop.to_string())) {
        edgecap_tls::pki::issue_agent(pki, &agent_id, pop)?;
    }
    Ok((coordinator, agent))
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let telemetry = edgecap_telemetry::init("edgecap", args.otlp_endpoint.as_deref(), "warn,edgecap=info", true)?;
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let Credentials { account, token, admin_token } = credentials(dir, args.account.clone(), args.token.clone())?;
    let (coordinator_tls, agent_tls) = ensure_pki(&dir.join("pki"), &args.pop)?;

    let coordinator = Coordinator::start(CoordinatorConfig {
        name: "local".into(),
        api_listen: args.listen,
        grpc_listen: args.grpc_listen,
        tls: coordinator_tls,
        tls_reload_interval: Duration::from_secs(5),
        state: StateConfig::parse(&args.state, dir).map_err(anyhow::Error::msg)?,
        storage: StorageConfig::LocalDir { root: dir.join("objects") },
        tmp_dir: dir.join("tmp"),
        limits: Limits::default(),
        rate_limits: if args.rate_limits { RateLimits::cloudflare() } else { RateLimits::off() },
        sample_timeout: Duration::from_secs(15),
        agent_wait: Duration::from_secs(5),
        tokens: vec![(account.clone(), token.clone())],
        admin_tokens: vec![admin_token.clone()],
        // One machine, one operator: its account sees everything (others it creates start
        // with no scope, as on a shared installation).
        unrestricted_accounts: vec![account.clone()],
        s3_credentials: match &args.s3_credentials {
            Some(path) => edgecap_coordinator::load_credentials(path)?,
            None => Default::default(),
        },
        full: edgecap_coordinator::FullSettings {
            keep_shards: args.keep_shards,
            // One machine: the user's S3-compatible server is usually on it, or on the LAN.
            endpoints: edgecap_coordinator::EndpointPolicy { allow_private: true, allowed: vec![] },
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;

    let mut agent_config = AgentConfig::new(
        vec![format!("https://127.0.0.1:{}", coordinator.grpc_addr.port())],
        agent_tls,
        args.interfaces.clone(),
    );
    agent_config.lookback = LookbackConfig { sample_rate: args.sample_rate.max(1), ..LookbackConfig::default() };
    agent_config.full = Some(edgecap_agent::FullCaptureConfig::new(dir.join("spool")));
    let agent = Agent::start(agent_config)?;
    let agent_id = agent.agent_id.clone();
    let cancel = CancellationToken::new();
    let agent_task = tokio::spawn(agent.run(cancel.clone()));

    let api = format!("http://{}/client/v4", coordinator.api_addr);
    let env = format!(
        "export EDGECAP_API={api} EDGECAP_ACCOUNT={account} EDGECAP_TOKEN={token} EDGECAP_ADMIN_TOKEN={admin_token}\n"
    );
    write_private(&dir.join("env"), env.as_bytes())?;
    // For a profile (`edgecap config set-profile`), which names a token file, never a token.
    write_private(&dir.join("token"), format!("{token}\n").as_bytes())?;
    println!("edgecap is up (data in {})", dir.display());
    println!("  API       {api}");
    println!("  account   {account}");
    println!("  token     {token}");
    println!("  PoP       {}: agent {agent_id} on {}", args.pop, args.interfaces.join(", "));
    println!("  agents    {} (mutual TLS; PKI in {})", coordinator.grpc_addr, dir.join("pki").display());
    println!();
    println!("In another shell:");
    println!("  source {}", dir.join("env").display());
    println!("  edgecap capture create --time-limit 60 --packet-limit 100 --wait");
    println!("or once, for every shell after it:");
    println!(
        "  edgecap config set-profile default --api {api} --account {account} --token-file {}",
        dir.join("token").display()
    );
    println!("Stop with Ctrl-C.");

    let agent_cancel = cancel.clone();
    let stop = async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // The agent first: its control stream is one of the coordinator's open connections.
        agent_cancel.cancel();
    };
    let result = coordinator.run_until(stop).await;
    cancel.cancel();
    agent_task.await.context("agent task")??;
    eprintln!("edgecap: stopped");
    telemetry.shutdown();
    result
}
