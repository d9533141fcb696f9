//! The edgecap coordinator.
//!
//! * `api`: the Cloudflare-compatible REST API (`/client/v4/accounts/{account}/pcaps...`).
//! * `control`: the mutual-TLS gRPC control plane that agents dial into.
//! * `sample`: sample captures, fanned out to every agent's lookback and merged.
//! * `repo`: the key layout over the state store; `validate`: request validation.
//!
//! [`Coordinator::start`] binds both listeners and runs until [`Coordinator::shutdown`];
//! tests and `edgecap up` run it in-process, `edgecap-coordinator` wraps it in a binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edgecap_state::StateConfig;
use edgecap_storage::s3::StaticCredentials;
use edgecap_storage::{ObjectStore, StorageConfig};
use edgecap_tls::TlsFiles;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod api;
pub mod control;
pub mod destination;
pub mod error;
pub mod full;
pub mod model;
pub mod relay;
pub mod repo;
pub mod sample;
pub mod tls_listener;
pub mod validate;

pub use api::RateLimits;
pub use validate::Limits;

/// How long a shutdown waits for open connections (agents' streams) before closing them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything a coordinator needs; see `edgecap-coordinator --help` for the flags.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Names this replica in logs, agent presence and certificates.
    pub name: String,
    pub api_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub tls: TlsFiles,
    pub tls_reload_interval: Duration,
    pub state: StateConfig,
    pub storage: StorageConfig,
    /// Scratch space for files being assembled.
    pub tmp_dir: PathBuf,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    /// How long to wait for one agent's sample answer.
    pub sample_timeout: Duration,
    /// How long a sample capture waits for a first agent when none is connected.
    pub agent_wait: Duration,
    /// `(account_id, token)` pairs to register at start.
    pub tokens: Vec<(String, String)>,
    /// Bucket name -> access key, for full captures' buckets (else the AWS default chain).
    pub s3_credentials: HashMap<String, StaticCredentials>,
    pub full: full::FullSettings,
}

/// Shared by the API handlers and background tasks.
pub struct AppState {
    pub repo: repo::Repo,
    pub registry: Arc<control::Registry>,
    pub store: Arc<dyn ObjectStore>,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    pub rate: api::RateLimiter,
    pub tmp_dir: PathBuf,
    pub sample_timeout: Duration,
    pub agent_wait: Duration,
    pub full: Arc<full::FullCaptures>,
}

/// A running coordinator.
pub struct Coordinator {
    pub api_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub state: Arc<AppState>,
    cancel: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// Validates account ids (path segment, key segment): 1-32 of `[A-Za-z0-9_-]`.
pub fn valid_account(account: &str) -> bool {
    (1..=32).contains(&account.len()) && account.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Coordinator {
    pub async fn start(config: CoordinatorConfig) -> anyhow::Result<Self> {
        edgecap_tls::install_default_provider();
        let tls = edgecap_tls::watch_server_config(config.tls.clone(), config.tls_reload_interval)
            .context("load the coordinator's TLS files")?;
        let store = edgecap_state::open(&config.state).await.context("open the state store")?;
        let objects = edgecap_storage::open(&config.storage).await.context("open the object store")?;
        std::fs::create_dir_all(&config.tmp_dir)
            .with_context(|| format!("create scratch directory {}", config.tmp_dir.display()))?;
        let repo = repo::Repo::new(store);
        for (account, token) in &config.tokens {
            anyhow::ensure!(valid_account(account), "account id {account:?}: use 1-32 of [A-Za-z0-9_-]");
            anyhow::ensure!(token.len() >= 16, "token for account {account}: use at least 16 characters");
            repo.add_token(account, token).await.context("register API tokens")?;
        }
        let registry = Arc::new(control::Registry::default());
        let full = Arc::new(full::FullCaptures::new(
            repo.clone(),
            registry.clone(),
            config.name.clone(),
            config.full.clone(),
            config.s3_credentials.clone(),
            config.tmp_dir.clone(),
        ));
        let state = Arc::new(AppState {
            repo: repo.clone(),
            registry: registry.clone(),
            store: objects,
            limits: config.limits.clone(),
            rate_limits: config.rate_limits.clone(),
            rate: api::RateLimiter::default(),
            tmp_dir: config.tmp_dir.clone(),
            sample_timeout: config.sample_timeout,
            agent_wait: config.agent_wait,
            full: full.clone(),
        });

        let api_listener = TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("bind the API listener on {}", config.api_listen))?;
        let grpc_listener = TcpListener::bind(config.grpc_listen)
            .await
            .with_context(|| format!("bind the agent control listener on {}", config.grpc_listen))?;
        let api_addr = api_listener.local_addr()?;
        let grpc_addr = grpc_listener.local_addr()?;
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();

        let router = api::router(state.clone());
        let api_cancel = cancel.clone();
        tasks.spawn(async move {
            axum::serve(api_listener, router)
                .with_graceful_shutdown(async move { api_cancel.cancelled().await })
                .await
                .context("serve the API")
        });

        let service = control::ControlService {
            registry,
            repo: repo.clone(),
            coordinator_name: config.name.clone(),
            full: state.full.clone(),
        };
        let incoming = tls_listener::incoming(grpc_listener, tls, cancel.clone());
        let grpc_cancel = cancel.clone();
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(20)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(edgecap_proto::agent::v1::agent_control_server::AgentControlServer::new(service))
                .serve_with_incoming_shutdown(incoming, grpc_cancel.cancelled())
                .await
                .context("serve the agent control plane")
        });

        // Sample captures accepted before a restart are run again: the window they name is
        // fixed in time, so the answer is the same as long as the lookbacks still hold it.
        for record in repo.list_all_captures().await.context("read captures")? {
            if record.capture_type == model::CaptureType::Simple && record.status == model::CaptureStatus::Pending {
                tracing::info!(capture = %record.id, "resuming a sample capture accepted before the restart");
                tokio::spawn(sample::run(state.clone(), record.account_id, record.id));
            }
        }
        // Full captures are followed by the elected leader (whichever replica it is), and
        // every replica forwards jobs to the agents connected to it.
        tasks.spawn({
            let full = full.clone();
            let cancel = cancel.clone();
            async move {
                full.lead(cancel).await;
                Ok(())
            }
        });
        tasks.spawn({
            let full = full.clone();
            let cancel = cancel.clone();
            async move {
                full.forward_jobs(cancel).await;
                Ok(())
            }
        });
        // Sample queries for agents connected here, asked by other replicas.
        tasks.spawn({
            let (repo, registry, cancel, timeout) =
                (repo.clone(), state.registry.clone(), cancel.clone(), config.sample_timeout);
            async move {
                relay::serve(repo, registry, timeout, cancel).await;
                Ok(())
            }
        });
        tracing::info!(%api_addr, %grpc_addr, name = %config.name, "coordinator started");
        Ok(Self { api_addr, grpc_addr, state, cancel, tasks })
    }

    /// Stops the listeners and waits for them, at most [`SHUTDOWN_GRACE`]: agents' control
    /// streams are long-lived and would otherwise hold a graceful shutdown open forever.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(result) = self.tasks.join_next().await {
                result??;
            }
            anyhow::Ok(())
        })
        .await;
        match drained {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; closing them");
                self.tasks.abort_all();
                Ok(())
            }
        }
    }

    /// Runs until a listener fails or `stop` resolves, then shuts down.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = stop => {}
            Some(result) = self.tasks.join_next() => {
                result??;
                anyhow::bail!("a listener stopped unexpectedly");
            }
        }
        self.shutdown().await
    }
}
