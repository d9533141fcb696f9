//! The Cloudflare-compatible REST API, mounted under `/client/v4`, one module per resource:
//! [`captures`] (`/pcaps`), [`ownership`] (`/pcaps/ownership`), [`agents`] (the operator
//! extension `/edgecap/v1/agents`), and [`web`] (the page at `/`). Callers are identified by
//! the extractors in [`auth`]; bodies are validated field by field in [`validate`]; errors are
//! built in [`error`].
//!
//! Every answer is the Cloudflare envelope (`success`, `errors`, `messages`, `result`),
//! except a successful download (raw PCAP) and stop/delete (204). Errors are 4xx with a
//! stable code and a message naming the field (see `docs/api.md`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use edgecap_storage::ObjectStore;
use serde_json::{Value, json};

use crate::agents::Registry;
use crate::config::{Limits, RateLimits};
use crate::full::FullCaptures;
use crate::sample::SampleCaptures;
use crate::store::{Repo, RepoError};

mod accounts;
mod admin;
mod agents;
mod auth;
mod body;
mod captures;
mod dry_run;
pub(crate) mod error;
pub(crate) mod openapi;
mod ownership;
mod pki;
mod rate;
mod stream;
pub(crate) mod tls;
mod unread;
mod validate;
mod web;

use error::{ApiError, code};
pub(crate) use rate::RateLimiter;

/// What the handlers share.
pub(crate) struct ApiState {
    pub repo: Repo,
    pub registry: Arc<Registry>,
    /// Where sample captures' files are.
    pub objects: Arc<dyn ObjectStore>,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    /// What an account without a scope may capture.
    pub unscoped: crate::config::UnscopedAccounts,
    /// Captures older than this answer 404 (see `retention.rs`).
    pub retention: Option<std::time::Duration>,
    pub rate: RateLimiter,
    pub samples: Arc<SampleCaptures>,
    pub full: Arc<FullCaptures>,
    pub tokens: Arc<crate::tokens::Tokens>,
    pub enrollment: Arc<crate::enroll::Enrollment>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

fn repo_err(e: RepoError) -> ApiError {
    match e {
        RepoError::State(s) => ApiError::state(&s),
        RepoError::NotFound(k) => ApiError::not_found(code::CAPTURE_NOT_FOUND, format!("{k}: not found")),
        RepoError::Decode { .. } => ApiError::internal(e.to_string()),
    }
}

fn envelope(result: Value) -> Response {
    envelope_of(&result)
}

/// Cloudflare's envelope around `result`, serialized straight from it (no `Value` tree: a
/// capture over hundreds of PoPs answers many fields per PoP, and dashboards poll it).
/// Keys in the order `json!` gives them (sorted).
fn envelope_of<T: serde::Serialize>(result: &T) -> Response {
    #[derive(serde::Serialize)]
    struct Envelope<'a, T> {
        errors: [(); 0],
        messages: [(); 0],
        result: &'a T,
        success: bool,
    }
    axum::Json(Envelope { errors: [], messages: [], result, success: true }).into_response()
}

fn collection(items: Vec<Value>) -> Response {
    let n = items.len();
    axum::Json(json!({
        "success": true, "errors": [], "messages": [], "result": items,
        "result_info": {"count": n, "page": 1, "per_page": n.max(1), "total_count": n},
    }))
    .into_response()
}

async fn no_route() -> ApiError {
    ApiError::not_found(code::NO_ROUTE, "No route for the URI")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, code::METHOD_NOT_ALLOWED, "Method not allowed")
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Longest an API request may take before it is answered 503 (a download's body streams
/// after that, unbounded).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers 503 with the envelope when a handler takes longer than [`REQUEST_TIMEOUT`].
async fn timeout(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::TIMEOUT,
            format!("request: not answered within {} s; try again", REQUEST_TIMEOUT.as_secs()),
        )
        .into_response(),
    }
}

/// One span per API request (exported with traces), named after the route, and its
/// count and latency in the metrics.
async fn trace_request(
    State(state): State<Arc<ApiState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tracing::Instrument as _;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("api", method = %method, route = %route, status = tracing::field::Empty);
    let response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    state.metrics.api_request(&route, method.as_str(), response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// The OpenAPI document (no authentication).
async fn openapi_document() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], openapi::json()).into_response()
}

/// Prometheus metrics of this replica (no authentication: no secret or capture id is in
/// them; keep the API listener's network policy in mind).
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let agents = state.registry.agents().len();
    ([(axum::http::header::CONTENT_TYPE, edgecap_common::prometheus::CONTENT_TYPE)], state.metrics.render(agents))
        .into_response()
}

/// Ready when the state store answers within 2 s (a replica that cannot reach it can serve
/// nothing but errors).
async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    match tokio::time::timeout(std::time::Duration::from_secs(2), state.repo.store().revision()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("state store: {e}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "state store: no answer within 2 s\n").into_response(),
    }
}

pub(crate) fn router(state: Arc<ApiState>) -> Router {
    let base = "/client/v4/accounts/{account_id}/pcaps";
    Router::new()
        .route(base, get(captures::list).post(captures::create))
        .route(&format!("{base}/ownership"), get(ownership::list).post(ownership::create))
        .route(&format!("{base}/ownership/validate"), post(ownership::validate))
        .route(&format!("{base}/ownership/{{ownership_id}}"), delete(ownership::delete))
        .route(&format!("{base}/{{pcap_id}}"), get(captures::get))
        .route(&format!("{base}/{{pcap_id}}/download"), get(captures::download))
        .route(&format!("{base}/{{pcap_id}}/stop"), put(captures::stop))
        .route(&format!("{base}/{{pcap_id}}/stream"), get(stream::stream))
        .route("/edgecap/v1/agents", get(agents::list))
        .route("/edgecap/v1/admin/tokens", get(admin::list_tokens).post(admin::create_token))
        .route("/edgecap/v1/admin/tokens/{name}", delete(admin::revoke_token))
        .route("/edgecap/v1/admin/accounts", get(accounts::list))
        .route("/edgecap/v1/admin/accounts/{account}", get(accounts::get).put(accounts::put).delete(accounts::delete))
        .route("/edgecap/v1/accounts/{account_id}/scope", get(accounts::own))
        .route("/edgecap/v1/admin/bootstrap-tokens", get(pki::list_bootstrap_tokens).post(pki::create_bootstrap_token))
        .route("/edgecap/v1/admin/certificates", get(pki::list_certificates))
        .route("/edgecap/v1/admin/revocations", get(pki::list_revocations).post(pki::revoke))
        .route("/client/v4/openapi.json", get(openapi_document))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn(timeout))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), trace_request))
        .layer(axum::middleware::from_fn(unread::close_if_unread))
        .with_state(state)
}
