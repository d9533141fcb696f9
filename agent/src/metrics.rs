//! The agent's own HTTP listener (`--metrics-listen`): Prometheus metrics at `/metrics`,
//! `/healthz` (the process answers) and `/readyz` (the control stream is up). Figures are
//! read from their owners at each scrape: the lookback's counters per interface, the spool
//! and uploads of full captures. No capture id is a label.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use edgecap_capture::Lookback;
use edgecap_common::lock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::full::Jobs;

/// What the listener reads from.
#[derive(Clone)]
pub(crate) struct Sources {
    pub lookback: Arc<Mutex<Lookback>>,
    pub jobs: Option<Arc<Jobs>>,
    /// Whether a control stream is up now.
    pub connected: Arc<AtomicBool>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Interface {
    interface: String,
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inner().store(value, Ordering::Relaxed);
    registry.register(name, help, c);
}

fn gauge_f64(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g: Gauge<f64, AtomicU64> = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The text exposition of every metric, as of now.
pub(crate) fn render(sources: &Sources) -> String {
    let mut registry = Registry::default();
    let received: Family<Interface, Counter> = Family::default();
    let dropped: Family<Interface, Counter> = Family::default();
    let stored: Family<Interface, Counter> = Family::default();
    let (bytes, age) = {
        let l = lock(&sources.lookback);
        for (name, s) in l.interface_stats() {
            let label = Interface { interface: name.to_string() };
            received.get_or_create(&label).inner().store(s.packets_seen, Ordering::Relaxed);
            dropped.get_or_create(&label).inner().store(s.kernel_dropped, Ordering::Relaxed);
            stored.get_or_create(&label).inner().store(s.packets_sampled, Ordering::Relaxed);
        }
        let age = l.oldest_ns().map_or(0.0, |t| edgecap_common::now_ns().saturating_sub(t) as f64 / 1e9);
        (l.bytes(), age)
    };
    registry.register(
        "edgecap_agent_packets_received",
        "Packets the capture threads read from each interface",
        received,
    );
    registry.register(
        "edgecap_agent_packets_dropped",
        "Packets the kernel dropped on each interface before the agent read them",
        dropped,
    );
    registry.register(
        "edgecap_agent_lookback_packets_stored",
        "Packets sampled into the lookback from each interface",
        stored,
    );
    gauge_f64(
        &mut registry,
        "edgecap_agent_lookback_bytes",
        "Bytes the lookback holds (packets and overhead)",
        bytes as f64,
    );
    gauge_f64(&mut registry, "edgecap_agent_lookback_age_seconds", "Age of the oldest packet in the lookback", age);
    let full = sources.jobs.as_ref().map(|j| j.gauges()).unwrap_or_default();
    gauge_f64(&mut registry, "edgecap_agent_spool_bytes", "Bytes in the full-capture spool", full.spool_bytes as f64);
    gauge_f64(
        &mut registry,
        "edgecap_agent_upload_lag_seconds",
        "Age of the oldest shard waiting for upload (0 when none waits)",
        full.upload_lag_seconds,
    );
    counter(
        &mut registry,
        "edgecap_agent_upload_retries",
        "Failed shard upload attempts (each is retried)",
        full.upload_retries,
    );
    counter(
        &mut registry,
        "edgecap_agent_spool_scans",
        "Scans of the full-capture spool for shards to upload (at most 10 a second)",
        full.spool_scans,
    );
    gauge_f64(
        &mut registry,
        "edgecap_agent_captures_active",
        "Full captures running on this agent",
        full.active as f64,
    );
    let up = sources.connected.load(Ordering::Relaxed);
    gauge_f64(
        &mut registry,
        "edgecap_agent_connected",
        "1 while the control stream to a coordinator is up",
        f64::from(u8::from(up)),
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    edgecap_common::prometheus::from_openmetrics(&text)
}

/// The listener's routes.
pub(crate) fn router(sources: Sources) -> axum::Router {
    use axum::routing::get;
    let scrape = sources.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let sources = scrape.clone();
                async move {
                    let text = tokio::task::spawn_blocking(move || render(&sources)).await.unwrap_or_default();
                    ([(header::CONTENT_TYPE, edgecap_common::prometheus::CONTENT_TYPE)], text)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let up = sources.connected.load(Ordering::Relaxed);
                async move {
                    if up {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "no control stream to a coordinator\n").into_response()
                    }
                }
            }),
        )
}
