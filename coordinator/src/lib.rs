//! The edgecap coordinator: the Cloudflare-compatible PCAP API, the agent control plane, and
//! the captures themselves. One room per responsibility:
//!
//! * [`api`](crate::api): the REST API, one module per resource;
//! * `control`: the mutual-TLS gRPC stream agents dial into, as a thin adapter;
//! * `agents`: the registry of agents connected to this replica (a leaf);
//! * `sample`: sample captures (fan-out to lookbacks, relay between replicas, the file);
//! * `full`: full captures (plan, jobs, uploads, leader, follow-up, merge, buckets);
//! * `store`: the records and keys in the state store; `model`: the records themselves;
//!   `convert`: wire messages to and from them; `config`: what the coordinator is told.
//!
//! [`Coordinator::start`] binds both listeners and runs until [`Coordinator::shutdown`];
//! tests and `edgecap up` run it in-process, `edgecap-coordinator` wraps it in a binary.
//! Every background task is owned by the coordinator's [`Tasks`] and has returned when
//! `shutdown` does (or the grace period is reported as exceeded).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edgecap_common::tasks::Tasks;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

mod accounts;
mod agents;
mod api;
#[doc(hidden)]
pub mod bench;
mod config;
mod control;
mod convert;
mod enroll;
mod full;
mod metrics;
mod model;
mod retention;
mod sample;
mod store;
mod tokens;

pub use agents::AgentInfo;
pub use api::error::code;
pub use config::{
    ApiTls, CoordinatorConfig, EnrollSettings, FullSettings, Limits, RateLimits, UnscopedAccounts, load_credentials,
    objects_config, valid_account,
};
pub use model::EndpointPolicy;
pub use model::rfc3339;

/// The API's OpenAPI 3.1 document (JSON), as served at `/client/v4/openapi.json` and kept in
/// `docs/openapi.json`.
pub fn openapi_json() -> String {
    api::openapi::json()
}

/// How long a shutdown waits for connections and background work before closing them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running coordinator.
pub struct Coordinator {
    /// Where the API listens (the port is known even when 0 was asked).
    pub api_addr: SocketAddr,
    /// Where agents connect.
    pub grpc_addr: SocketAddr,
    router: axum::Router,
    registry: Arc<agents::Registry>,
    /// Background work: control sessions, captures, the leader, watches.
    tasks: Tasks,
    /// The two listeners; either ending early is an error.
    servers: JoinSet<anyhow::Result<()>>,
}

impl Coordinator {
    /// Opens the backends, binds both listeners and starts the background work.
    pub async fn start(config: CoordinatorConfig) -> anyhow::Result<Self> {
        edgecap_tls::install_default_provider();
        // A full capture's merge opens a file per agent: take what the hard limit allows.
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => tracing::debug!(limit, "file-descriptor limit"),
            Err(error) => tracing::warn!(%error, "file-descriptor limit not raised"),
        }
        // With enrollment on, a client without a certificate may connect, and can only enroll.
        let tls = match &config.enroll {
            Some(_) => edgecap_tls::watch_server_config_enrolling(config.tls.clone(), config.tls_reload_interval),
            None => edgecap_tls::watch_server_config(config.tls.clone(), config.tls_reload_interval),
        }
        .context("load the coordinator's TLS files")?;
        let signer = match &config.enroll {
            Some(settings) => Some(
                edgecap_tls::enroll::CaSigner::load(&config.tls.ca, &settings.ca_key)
                    .context("load the CA key to enroll agents with (--enroll-ca-key)")?,
            ),
            None => None,
        };
        let state_store = edgecap_state::open(&config.state).await.context("open the state store")?;
        let objects = edgecap_storage::open(&config.storage).await.context("open the object store")?;
        tokio::fs::create_dir_all(&config.tmp_dir)
            .await
            .with_context(|| format!("create scratch directory {}", config.tmp_dir.display()))?;
        let metrics = Arc::new(metrics::Metrics::default());
        let repo = store::Repo::new(Arc::new(store::Metered::new(state_store, metrics.clone())));
        for (account, token) in &config.tokens {
            anyhow::ensure!(valid_account(account), "account id {account:?}: use 1-32 of [A-Za-z0-9_-]");
            anyhow::ensure!(token.len() >= 16, "token for account {account}: use at least 16 characters");
        }
        let tokens = Arc::new(tokens::Tokens::new(
            repo.clone(),
            config.tokens_file.clone(),
            config.admin_tokens.clone(),
            config.admin_tokens_file.clone(),
        ));
        tokens.start(&config.tokens).await.context("register API tokens")?;
        accounts::load(&repo, &config.unrestricted_accounts, config.accounts_file.as_deref())
            .await
            .context("set account scopes")?;
        let tasks = Tasks::new();
        let registry = Arc::new(agents::Registry::default());
        let lifetime = config.enroll.as_ref().map_or(Duration::from_secs(86_400), |e| e.cert_lifetime);
        let enrollment = Arc::new(enroll::Enrollment::new(repo.clone(), signer, lifetime));
        let full = Arc::new(full::FullCaptures::new(
            repo.clone(),
            registry.clone(),
            config.name.clone(),
            config.full.clone(),
            config.s3_credentials.clone(),
            config.tmp_dir.clone(),
            metrics.clone(),
        ));
        let relay = Arc::new(sample::relay::Relay::new(repo.clone(), config.sample_timeout));
        let samples = Arc::new(sample::SampleCaptures {
            relay: relay.clone(),
            repo: repo.clone(),
            registry: registry.clone(),
            objects: objects.clone(),
            tmp_dir: config.tmp_dir.clone(),
            packet_limit_max: config.limits.packet_limit_max,
            timeout: config.sample_timeout,
            agent_wait: config.agent_wait,
            tasks: tasks.clone(),
            metrics: metrics.clone(),
            running: Default::default(),
        });
        let objects_for_retention = objects.clone();
        let api_state = Arc::new(api::ApiState {
            repo: repo.clone(),
            registry: registry.clone(),
            objects,
            limits: config.limits.clone(),
            rate_limits: config.rate_limits.clone(),
            retention: config.retention,
            unscoped: config.unscoped_accounts,
            rate: api::RateLimiter::default(),
            samples: samples.clone(),
            full: full.clone(),
            tokens: tokens.clone(),
            enrollment: enrollment.clone(),
            metrics,
        });

        let api_listener = TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("bind the API listener on {}", config.api_listen))?;
        let grpc_listener = TcpListener::bind(config.grpc_listen)
            .await
            .with_context(|| format!("bind the agent control listener on {}", config.grpc_listen))?;
        let api_addr = api_listener.local_addr()?;
        let grpc_addr = grpc_listener.local_addr()?;
        let mut servers = JoinSet::new();

        let router = api::router(api_state);
        let api_cancel = tasks.token();
        let api_router = router.clone();
        match &config.api_tls {
            Some(files) => {
                let tls = edgecap_tls::watch_https_server_config(&files.cert, &files.key, config.tls_reload_interval)
                    .context("load the API's TLS certificate")?;
                let listener = api::tls::listen(api_listener, tls, &tasks).context("listen for HTTPS")?;
                servers.spawn(async move {
                    axum::serve(listener, api_router)
                        .with_graceful_shutdown(async move { api_cancel.cancelled().await })
                        .await
                        .context("serve the API over HTTPS")
                });
            }
            None => {
                servers.spawn(async move {
                    axum::serve(api_listener, api_router)
                        .with_graceful_shutdown(async move { api_cancel.cancelled().await })
                        .await
                        .context("serve the API")
                });
            }
        }

        let presences = Arc::new(control::presence::Presences::new(repo.clone()));
        tasks.spawn(presences.clone().run(tasks.token()));
        let service = control::ControlService {
            registry: registry.clone(),
            presences,
            coordinator_name: config.name.clone(),
            full: full.clone(),
            enrollment: enrollment.clone(),
            tasks: tasks.clone(),
        };
        let incoming = control::tls_listener::incoming(grpc_listener, tls, enrollment.revoked(), &tasks);
        let grpc_cancel = tasks.token();
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(20)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(
                    edgecap_proto::agent::v1::agent_control_server::AgentControlServer::new(service)
                        .max_decoding_message_size(edgecap_proto::MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(edgecap_proto::MAX_MESSAGE_BYTES),
                )
                .serve_with_incoming_shutdown(incoming, grpc_cancel.cancelled_owned())
                .await
                .context("serve the agent control plane")
        });

        samples.resume_pending().await.context("read captures")?;
        tasks.spawn(tokens.watch_files(tasks.token()));
        tasks.spawn(control::presence::announce_replica(repo.clone(), config.name.clone(), tasks.token()));
        tasks.spawn(enrollment.clone().follow_revocations(tasks.token()));
        tasks.spawn(retention::run(
            repo.clone(),
            objects_for_retention,
            config.retention,
            full.leadership(),
            tasks.token(),
        ));
        // Full captures are followed by the elected leader (whichever replica it is), and
        // every replica forwards jobs to the agents connected to it.
        tasks.spawn(full.clone().lead(tasks.token()));
        tasks.spawn(full.clone().forward_jobs(tasks.token()));
        tasks.spawn(full.clone().write_progress(tasks.token()));
        // Sample queries for agents connected here, asked by other replicas.
        tasks.spawn(sample::relay::serve(relay.clone(), registry.clone(), config.sample_timeout, tasks.clone()));
        tasks.spawn(sample::batch::serve(relay.clone(), registry.clone(), config.sample_timeout, tasks.clone()));
        tasks.spawn(relay.run(tasks.token()));
        tracing::info!(%api_addr, %grpc_addr, name = %config.name, "coordinator started");
        Ok(Self { api_addr, grpc_addr, router, registry, tasks, servers })
    }

    /// The API's router, to drive it without a socket (tests).
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// The agents connected to this replica now.
    pub fn connected_agents(&self) -> Vec<AgentInfo> {
        self.registry.agents()
    }

    /// Stops the listeners and every background task and waits for them, at most
    /// [`SHUTDOWN_GRACE`] each.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        // Cancelling ends the agents' sessions too, so the listeners can drain.
        let clean = self.tasks.shutdown(SHUTDOWN_GRACE).await;
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(result) = self.servers.join_next().await {
                result??;
            }
            anyhow::Ok(())
        })
        .await;
        match drained {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; closing them");
                self.servers.abort_all();
            }
        }
        if !clean {
            tracing::warn!("some background work had not finished when the coordinator stopped");
        }
        Ok(())
    }

    /// Runs until a listener fails or `stop` resolves, then shuts down.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = stop => {}
            Some(result) = self.servers.join_next() => {
                result??;
                anyhow::bail!("a listener stopped unexpectedly");
            }
        }
        self.shutdown().await
    }
}
