//! The coordinator's Prometheus metrics, served at `/metrics` on the API listener. Each
//! replica counts what it did itself: API requests, captures created and finished, sample
//! fan-outs and merges it ran, state-store errors; `edgecap_captures_running{type="full"}`
//! is the leader's (other replicas report 0), so sums over replicas are right. Labels are
//! few and bounded: route templates, methods, statuses, capture types; never a capture id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::model::{CaptureStatus, CaptureType};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finished {
    r#type: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The wire name of an enum value (`full`, `success`): the same words the API uses.
fn word<T: Serialize>(value: T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Every metric of one replica.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<Request, Counter>,
    request_seconds: Histograms<Route>,
    created: Family<Kind, Counter>,
    finished: Family<Finished, Counter>,
    running: Family<Kind, Gauge>,
    agents: Gauge,
    fanout_seconds: Histogram,
    merge_seconds: Histogram,
    store_errors: Family<Op, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Request, Counter>::default();
        let request_seconds = Histograms::<Route>::new_with_constructor(latency);
        let created = Family::<Kind, Counter>::default();
        let finished = Family::<Finished, Counter>::default();
        let running = Family::<Kind, Gauge>::default();
        let agents = Gauge::default();
        let fanout_seconds = latency();
        let merge_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let store_errors = Family::<Op, Counter>::default();
        registry.register(
            "edgecap_api_requests",
            "API requests by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "edgecap_api_request_duration_seconds",
            "API request latency by route",
            request_seconds.clone(),
        );
        registry.register(
            "edgecap_captures_created",
            "Captures created through this replica, by type",
            created.clone(),
        );
        registry.register(
            "edgecap_captures_finished",
            "Captures this replica took to a final status, by type and status",
            finished.clone(),
        );
        registry.register(
            "edgecap_captures_running",
            "Captures in progress on this replica (full captures: on the leader)",
            running.clone(),
        );
        registry.register("edgecap_agents_connected", "Agents with a control stream to this replica", agents.clone());
        registry.register(
            "edgecap_sample_fanout_duration_seconds",
            "Time from a sample capture's start to every PoP answering or timing out",
            fanout_seconds.clone(),
        );
        registry.register(
            "edgecap_merge_duration_seconds",
            "Time to merge a full capture's shards into the delivered file",
            merge_seconds.clone(),
        );
        registry.register(
            "edgecap_state_store_errors",
            "Failed state-store operations by operation",
            store_errors.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            created,
            finished,
            running,
            agents,
            fanout_seconds,
            merge_seconds,
            store_errors,
        }
    }
}

impl Metrics {
    pub(crate) fn api_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let request = Request { route: route.to_string(), method: method.to_string(), status };
        self.requests.get_or_create(&request).inc();
        self.request_seconds.get_or_create(&Route { route: route.to_string() }).observe(seconds);
    }

    pub(crate) fn capture_created(&self, kind: CaptureType) {
        self.created.get_or_create(&Kind { r#type: word(kind) }).inc();
    }

    pub(crate) fn capture_finished(&self, kind: CaptureType, status: CaptureStatus) {
        self.finished.get_or_create(&Finished { r#type: word(kind), status: word(status) }).inc();
    }

    /// Sets how many captures of `kind` this replica is running.
    pub(crate) fn set_running(&self, kind: CaptureType, count: usize) {
        self.running.get_or_create(&Kind { r#type: word(kind) }).set(count as i64);
    }

    /// Adds `delta` to the captures of `kind` running here.
    pub(crate) fn add_running(&self, kind: CaptureType, delta: i64) {
        self.running.get_or_create(&Kind { r#type: word(kind) }).inc_by(delta);
    }

    pub(crate) fn fanout(&self, seconds: f64) {
        self.fanout_seconds.observe(seconds);
    }

    pub(crate) fn merge(&self, seconds: f64) {
        self.merge_seconds.observe(seconds);
    }

    pub(crate) fn store_error(&self, op: &'static str) {
        self.store_errors.get_or_create(&Op { op: op.to_string() }).inc();
    }

    /// The text exposition, with `agents` connected now.
    pub(crate) fn render(&self, agents: usize) -> String {
        self.agents.set(agents as i64);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        edgecap_common::prometheus::from_openmetrics(&text)
    }
}
