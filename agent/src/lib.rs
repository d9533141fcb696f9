//! The edgecap agent: runs in every PoP, keeps the sampled lookback of its interfaces, runs
//! full captures into a spool, and answers the coordinator over one mutual-TLS control stream
//! that it dials itself (so it works behind NAT and firewalls).
//!
//! * `config`: what the agent is told, and who it is (its certificate);
//! * `connection`: dialling, mutual TLS, backoff; `dispatch`: one connection's session;
//! * `sample`: answers from the lookback; `full`: full captures (jobs, spool, uploads);
//! * [`enroll`]: the agent's own key and certificate, enrolled and renewed;
//! * `convert`: wire messages to and from the agent's types; [`http`]: presigned uploads.
//!
//! Connection life cycle: dial a coordinator (endpoints tried in turn), send Hello, serve
//! queries and send heartbeats until the stream drops, then back off (exponential, with
//! jitter, capped) and dial again. When the agent's certificate files change, the stream is
//! re-established with the new identity; the lookback is not interrupted by any of this.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use edgecap_capture::{Lookback, LookbackCapture};
use edgecap_common::tasks::Tasks;
use tokio_util::sync::CancellationToken;

mod clock;
mod config;
mod connection;
mod convert;
mod dispatch;
pub mod enroll;
mod full;
pub mod http;
mod metrics;
mod sample;
pub mod standalone;

pub use clock::AgentClock;
pub use config::{AgentConfig, EndpointOrder, EnrollConfig, FullCaptureConfig, own_identity};
pub use connection::connect;
pub use convert::filter_from_pb;
pub use dispatch::VERSION;
pub use sample::answer_sample;

/// How long a stopping agent waits for its captures to record their end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running agent: its lookback and its connection loop.
pub struct Agent {
    /// The agent's id, from its certificate.
    pub agent_id: String,
    /// The PoP it captures for, from its certificate.
    pub pop: String,
    capture: Option<LookbackCapture>,
    parts: dispatch::Parts,
    /// The metrics and health listener, bound at start.
    metrics: Option<std::net::TcpListener>,
}

impl Agent {
    /// Opens the interfaces and starts the lookback. Errors here are configuration errors.
    pub fn start(config: AgentConfig) -> anyhow::Result<Self> {
        edgecap_tls::install_default_provider();
        anyhow::ensure!(!config.coordinators.is_empty(), "at least one coordinator endpoint is required");
        for endpoint in &config.coordinators {
            connection::parse_endpoint(endpoint)?;
        }
        let (agent_id, pop) = own_identity(&config.tls)?;
        let sources = edgecap_capture::source::factory(&config.source);
        let lookback = Arc::new(Mutex::new(Lookback::new(config.lookback.clone())));
        let capture = LookbackCapture::start(&config.capture, sources.clone(), lookback.clone())
            .context("start the lookback capture")?;
        let first = config.capture.interfaces.first().cloned();
        let feed = first.as_deref().and_then(|iface| capture.feed(iface));
        let jobs = match &config.full {
            Some(full) => Some(Arc::new(
                full::Jobs::open(full.clone(), &agent_id, &pop, first, sources)
                    .context("open the full-capture spool")?
                    .with_lookback_feed(feed),
            )),
            None => None,
        };
        let metrics = match config.metrics_listen {
            Some(addr) => {
                let listener =
                    std::net::TcpListener::bind(addr).with_context(|| format!("--metrics-listen: bind {addr}"))?;
                listener.set_nonblocking(true)?;
                Some(listener)
            }
            None => None,
        };
        let clock = config.clock;
        let parts = dispatch::Parts {
            config,
            lookback,
            jobs,
            tasks: Tasks::new(),
            connected: Default::default(),
            clock,
            offset: Default::default(),
        };
        Ok(Self { agent_id, pop, capture: Some(capture), parts, metrics })
    }

    /// Where the metrics listener is bound, if there is one.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The lookback the agent answers sample queries from.
    pub fn lookback(&self) -> &Arc<Mutex<Lookback>> {
        &self.parts.lookback
    }

    /// Keeps the control stream up until `cancel`; then stops the captures (their shards stay
    /// spooled for the next run) and the lookback.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        if let Some(listener) = self.metrics.take() {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let sources = metrics::Sources {
                lookback: self.parts.lookback.clone(),
                jobs: self.parts.jobs.clone(),
                connected: self.parts.connected.clone(),
            };
            let stop = self.parts.tasks.token();
            self.parts.tasks.spawn(async move {
                let served = axum::serve(listener, metrics::router(sources))
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(error) = served {
                    tracing::warn!(%error, "metrics listener ended");
                }
            });
        }
        let config = &self.parts.config;
        let mut tls = edgecap_tls::watch_client_config(config.tls.clone(), config.tls_reload_interval)
            .context("load the agent's TLS files")?;
        let mut backoff = connection::Backoff::new(config.backoff_min, config.backoff_max);
        // This agent's order of the replicas: agents spread over them instead of all dialling
        // the first one listed.
        let order = match config.endpoint_order {
            EndpointOrder::Spread => connection::preference(&self.agent_id, &config.coordinators),
            EndpointOrder::Listed => config.coordinators.clone(),
        };
        let mut endpoint_index = 0usize;
        if config.enroll.is_some() {
            self.parts.tasks.spawn(enroll::renew(config.clone(), Duration::from_secs(30), self.parts.tasks.token()));
        }
        while !cancel.is_cancelled() {
            let position = endpoint_index % order.len();
            let endpoint = order[position].clone();
            endpoint_index += 1;
            let started = tokio::time::Instant::now();
            // Connected to a replica other than its first choice, the agent checks now and
            // then whether a preferred one is back, and moves there (ending this session).
            let session_cancel = cancel.child_token();
            let back = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
            if position > 0 {
                let (preferred, stop, back) = (order[..position].to_vec(), session_cancel.clone(), back.clone());
                let interval = config.rebalance_interval;
                self.parts.tasks.spawn(async move {
                    loop {
                        // Spread over the interval so a fleet does not move at once.
                        let wait = interval.mul_f64(0.5 + fastrand::f64());
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        for (i, endpoint) in preferred.iter().enumerate() {
                            if connection::reachable(endpoint).await {
                                tracing::info!(%endpoint, "a preferred coordinator is back; moving to it");
                                back.store(i, std::sync::atomic::Ordering::Relaxed);
                                stop.cancel();
                                return;
                            }
                        }
                    }
                });
            }
            let result = dispatch::session(&self.parts, &endpoint, &mut tls, &session_cancel).await;
            session_cancel.cancel();
            if cancel.is_cancelled() {
                break;
            }
            let moved = back.load(std::sync::atomic::Ordering::Relaxed);
            if moved != usize::MAX {
                endpoint_index = moved;
                continue;
            }
            match result {
                Ok(()) => tracing::info!(%endpoint, "control stream closed"),
                Err(error) => tracing::warn!(%endpoint, error = format!("{error:#}"), "control stream failed"),
            }
            let wait = backoff.after(started.elapsed());
            tracing::info!(wait_ms = wait.as_millis() as u64, "reconnecting after backoff");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(jobs) = &self.parts.jobs {
            // Running full captures end normally (their shards stay spooled for the next run).
            jobs.stop_all();
        }
        self.parts.tasks.shutdown(SHUTDOWN_GRACE).await;
        if let Some(capture) = self.capture.take() {
            tokio::task::spawn_blocking(move || capture.stop()).await.ok();
        }
        Ok(())
    }
}
