//! The Cloudflare-compatible REST API, mounted under `/client/v4`.
//!
//! Every answer is the Cloudflare envelope (`success`, `errors`, `messages`, `result`),
//! except a successful download (raw PCAP) and stop/delete (204). Errors are 4xx with a
//! stable code and a message naming the field (see `error.rs`, `docs/api.md`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::AppState;
use crate::error::{ApiError, code};
use crate::model::{
    CaptureRecord, CaptureStatus, CaptureType, OwnershipRecord, OwnershipStatus, PopResult, is_id, new_id, rfc3339,
};
use crate::repo::RepoError;
use crate::validate::{parse_create, parse_ownership_create, parse_ownership_validate};
use edgecap_storage::ObjectStore as _;

/// Per-account limits from Cloudflare's docs: one sample request per minute, one running or
/// pending full capture. `None` turns a limit off.
#[derive(Clone, Debug)]
pub struct RateLimits {
    pub sample_interval: Option<Duration>,
    pub max_active_full: Option<usize>,
}

impl RateLimits {
    pub fn cloudflare() -> Self {
        Self { sample_interval: Some(Duration::from_secs(60)), max_active_full: Some(1) }
    }
    pub fn off() -> Self {
        Self { sample_interval: None, max_active_full: None }
    }
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    last_sample: Mutex<HashMap<String, Instant>>,
}

impl RateLimiter {
    fn check_sample(&self, account: &str, interval: Option<Duration>) -> Result<(), ApiError> {
        let Some(interval) = interval else { return Ok(()) };
        let mut last = self.last_sample.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(prev) = last.get(account) {
            let next = *prev + interval;
            if next > now {
                let wait = (next - now).as_secs_f64().ceil() as u64;
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    code::RATE_LIMITED,
                    format!("type: one sample capture per {} s per account; retry in {wait} s", interval.as_secs()),
                );
                e.retry_after = Some(wait.max(1));
                return Err(e);
            }
        }
        last.insert(account.to_string(), now);
        Ok(())
    }
}

fn repo_err(e: RepoError) -> ApiError {
    match e {
        RepoError::State(s) => ApiError::state(&s),
        RepoError::NotFound(k) => ApiError::not_found(code::CAPTURE_NOT_FOUND, format!("{k}: not found")),
        RepoError::Decode { .. } => ApiError::internal(e.to_string()),
    }
}

fn envelope(result: Value) -> Response {
    axum::Json(json!({"success": true, "errors": [], "messages": [], "result": result})).into_response()
}

fn collection(items: Vec<Value>) -> Response {
    let n = items.len();
    axum::Json(json!({
        "success": true, "errors": [], "messages": [], "result": items,
        "result_info": {"count": n, "page": 1, "per_page": n.max(1), "total_count": n},
    }))
    .into_response()
}

/// Checks `Authorization: Bearer <token>` and that the token's account is `account`.
/// Another account's resources answer 404: their existence is not revealed.
async fn authorize(state: &AppState, headers: &HeaderMap, account: &str) -> Result<(), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = bearer else {
        if headers.contains_key("x-auth-key") || headers.contains_key("x-auth-email") {
            return Err(ApiError::unauthorized(
                "X-Auth-Email/X-Auth-Key are not supported: use an API token (Authorization: Bearer <token>)",
            ));
        }
        return Err(ApiError::unauthorized("Authorization: a Bearer API token is required"));
    };
    match state.repo.account_for_token(token).await.map_err(repo_err)? {
        None => Err(ApiError::unauthorized("Authorization: invalid API token")),
        Some(owner) if owner == account => Ok(()),
        Some(_) => Err(ApiError::not_found(code::ACCOUNT_NOT_FOUND, format!("account_id: {account:?} not found"))),
    }
}

async fn find_capture(state: &AppState, account: &str, id: &str) -> Result<CaptureRecord, ApiError> {
    let not_found = || ApiError::not_found(code::CAPTURE_NOT_FOUND, format!("pcap_id: {id:?} not found"));
    if !is_id(id) {
        return Err(not_found());
    }
    state.repo.get_capture(account, id).await.map_err(repo_err)?.ok_or_else(not_found)
}

async fn list_captures(
    State(state): State<Arc<AppState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let records = state.repo.list_captures(&account).await.map_err(repo_err)?;
    // Cloudflare returns up to 50 requests, newest first.
    Ok(collection(records.iter().take(50).map(CaptureRecord::to_api).collect()))
}

async fn create_capture(
    State(state): State<Arc<AppState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let now = time::OffsetDateTime::now_utc();
    let request = parse_create(&body, &state.limits, now)?;
    if request.capture_type == CaptureType::Full {
        return create_full(state, account, request, now).await;
    }
    state.rate.check_sample(&account, state.rate_limits.sample_interval)?;
    let record = new_record(&account, request, now);
    state.repo.create_capture(&record).await.map_err(repo_err)?;
    tracing::info!(account = %account, capture = %record.id, "sample capture accepted");
    tokio::spawn(crate::sample::run(state.clone(), account, record.id.clone()));
    Ok(envelope(record.to_api()))
}

/// A new capture record from a validated request, status `pending`.
fn new_record(account: &str, request: crate::validate::CreateRequest, now: time::OffsetDateTime) -> CaptureRecord {
    CaptureRecord {
        id: new_id(),
        account_id: account.to_string(),
        capture_type: request.capture_type,
        system: "magic-transit".into(),
        status: CaptureStatus::Pending,
        submitted: rfc3339(now),
        time_limit: request.time_limit,
        packet_limit: request.packet_limit,
        byte_limit: request.byte_limit,
        filter_v1: request.filter,
        filter_bpf: request.filter_bpf.as_ref().map(|f| f.text.clone()),
        filter_bpf_hash: request.filter_bpf.map(|f| f.hash),
        offset_time: request.offset_time.map(rfc3339),
        colo_name: request.colo_name,
        destination_conf: request.destination.map(|d| d.uri),
        output_format: request.output_format,
        packets_captured: None,
        stop_requested: None,
        error_message: None,
        pops: vec![],
        object_key: None,
    }
}

/// The user's bucket could not be reached (retry later): 503 naming the field.
fn bucket_error(e: &edgecap_storage::StorageError) -> ApiError {
    tracing::warn!(error = %e, "bucket unreachable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        code::STORAGE_UNAVAILABLE,
        format!("destination_conf: bucket unreachable: {e}"),
    )
}

/// Selects the agents of a colo: an exact PoP name, or every PoP whose name starts with it
/// (`ord` covers `ord01` and `ord02`). Case-insensitive.
/// Agents are taken from the shared presence keys, so every replica sees every agent.
/// Returns them, and whether the colo named a PoP exactly (see [`in_colo`]).
async fn colo_agents(state: &AppState, colo: &str) -> Result<(Vec<crate::repo::AgentPresence>, bool), ApiError> {
    let mut agents = state.repo.list_agents().await.map_err(repo_err)?;
    agents.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
    let exact = agents.iter().any(|a| in_colo(&a.pop, colo, true));
    Ok((agents.into_iter().filter(|a| in_colo(&a.pop, colo, exact)).collect(), exact))
}

/// Whether PoP `pop` is in colo `colo`: its exact name when `exact` (some present PoP has
/// that name), else any PoP whose name starts with it. Case-insensitive.
fn in_colo(pop: &str, colo: &str, exact: bool) -> bool {
    let (pop, colo) = (pop.to_ascii_lowercase(), colo.to_ascii_lowercase());
    if exact { pop == colo } else { pop.starts_with(&colo) }
}

async fn create_full(
    state: Arc<AppState>,
    account: String,
    request: crate::validate::CreateRequest,
    now: time::OffsetDateTime,
) -> Result<Response, ApiError> {
    let destination = request
        .destination
        .clone()
        .ok_or_else(|| ApiError::bad_request(code::MISSING_FIELD, "destination_conf: required for full captures"))?;
    let colo = request.colo_name.clone().unwrap_or_default();
    // The bucket must have been proven to be this account's.
    let ownerships = state.repo.list_ownerships(&account).await.map_err(repo_err)?;
    let owned =
        ownerships.iter().any(|o| o.destination_conf == destination.uri && o.status == OwnershipStatus::Success);
    if !owned {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::BUCKET_NOT_VALIDATED,
            format!(
                "destination_conf: bucket {:?} has not been validated for this account (POST .../pcaps/ownership, then .../ownership/validate)",
                destination.uri
            ),
        ));
    }
    if let Some(max) = state.rate_limits.max_active_full {
        let active = state
            .repo
            .list_captures(&account)
            .await
            .map_err(repo_err)?
            .iter()
            .filter(|r| r.capture_type == CaptureType::Full && !r.status.is_final())
            .count();
        if active >= max {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                code::FULL_CAPTURE_RUNNING,
                format!(
                    "type: this account already has {active} pending or running full capture(s); the limit is {max}"
                ),
            ));
        }
    }
    let (agents, exact) = colo_agents(&state, &colo).await?;
    // Agents of the colo that were seen before but are offline now: named, as skipped.
    let offline: Vec<crate::repo::AgentPresence> = match state.repo.list_known_agents().await {
        Ok(known) => known
            .into_iter()
            .filter(|k| in_colo(&k.pop, &colo, exact) && agents.iter().all(|a| a.agent_id != k.agent_id))
            .collect(),
        Err(_) => vec![],
    };
    if agents.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code::INVALID_VALUE,
            format!("colo_name: no agent is connected in a PoP named {colo:?} or starting with it"),
        ));
    }
    // Reachability of the bucket is checked when shards are granted; the store is built now
    // so a destination that cannot even be configured is refused at once.
    state.full.store_for(&destination).await.map_err(|e| bucket_error(&e))?;
    let mut record = new_record(&account, request, now);
    record.colo_name = Some(colo);
    record.pops = agents
        .iter()
        .map(|a| PopResult {
            pop: a.pop.clone(),
            agent_id: a.agent_id.clone(),
            status: "pending".into(),
            sample_rate: 1,
            ..PopResult::default()
        })
        .chain(offline.iter().map(|a| PopResult {
            pop: a.pop.clone(),
            agent_id: a.agent_id.clone(),
            status: "skipped".into(),
            error: Some(format!("agent offline (last connected {}); nothing captured there", a.connected_at)),
            ..PopResult::default()
        }))
        .collect();
    state.repo.create_capture(&record).await.map_err(repo_err)?;
    tracing::info!(%account, capture = %record.id, pops = record.pops.len(), "full capture accepted");
    state.full.submit(&record).await.map_err(repo_err)?;
    Ok(envelope(record.to_api()))
}

async fn get_capture(
    State(state): State<Arc<AppState>>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    Ok(envelope(find_capture(&state, &account, &id).await?.to_api()))
}

async fn download(
    State(state): State<Arc<AppState>>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let record = find_capture(&state, &account, &id).await?;
    if record.capture_type == CaptureType::Full {
        return Err(ApiError::bad_request(
            code::NOT_DOWNLOADABLE,
            "pcap_id: full captures are delivered to their bucket, not downloaded through the API",
        ));
    }
    match record.status {
        CaptureStatus::Success => {}
        CaptureStatus::Failed => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                code::NOT_READY,
                format!("pcap_id: capture failed, nothing to download: {}", record.error_message.unwrap_or_default()),
            ));
        }
        other => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                code::NOT_READY,
                format!("pcap_id: capture is {other:?}, not ready for download yet").to_lowercase(),
            ));
        }
    }
    let key = record.object_key.ok_or_else(|| ApiError::internal("successful capture without a file"))?;
    let (meta, reader) = state.store.get(&key).await.map_err(|e| ApiError::storage(&e))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    Ok((
        [
            (header::CONTENT_TYPE, "application/vnd.tcpdump.pcap".to_string()),
            (header::CONTENT_LENGTH, meta.size.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"pcap_{id}.pcap\"")),
        ],
        body,
    )
        .into_response())
}

async fn stop(
    State(state): State<Arc<AppState>>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let record = find_capture(&state, &account, &id).await?;
    if record.capture_type == CaptureType::Simple {
        return Err(ApiError::bad_request(
            code::NOT_STOPPABLE,
            "pcap_id: sample captures complete at once; only full captures can be stopped",
        ));
    }
    if record.status.is_final() {
        return Err(ApiError::bad_request(code::NOT_STOPPABLE, "pcap_id: capture has already finished"));
    }
    if record.stop_requested.is_none() {
        let now = rfc3339(time::OffsetDateTime::now_utc());
        state
            .repo
            .update_capture(&account, &id, |r| {
                r.stop_requested.get_or_insert_with(|| now.clone());
            })
            .await
            .map_err(repo_err)?;
    }
    if record.capture_type == CaptureType::Full {
        state.full.request_stop(&record).await.map_err(repo_err)?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_ownerships(
    State(state): State<Arc<AppState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let records = state.repo.list_ownerships(&account).await.map_err(repo_err)?;
    Ok(collection(records.iter().map(|r| r.to_api()).collect()))
}

/// Writes `ownership-challenge-<id>.txt` with a random secret into the bucket. Whoever can
/// read it back owns (or is trusted by the owner of) the bucket.
async fn create_ownership(
    State(state): State<Arc<AppState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let destination = parse_ownership_create(&body)?;
    let id = new_id();
    let filename = format!("ownership-challenge-{id}.txt");
    let challenge = format!("{}{}", new_id(), new_id());
    let store = state.full.store_for(&destination).await.map_err(|e| bucket_error(&e))?;
    if let Err(e) = store.put(&filename, Bytes::from(format!("{challenge}\n"))).await {
        return Err(match e {
            e if e.is_retryable() => bucket_error(&e),
            e => ApiError::bad_request(
                code::BUCKET_UNWRITABLE,
                format!("destination_conf: could not write the ownership challenge into the bucket: {e}"),
            ),
        });
    }
    let record = OwnershipRecord {
        id,
        account_id: account.clone(),
        destination_conf: destination.uri,
        filename,
        status: OwnershipStatus::Pending,
        submitted: rfc3339(time::OffsetDateTime::now_utc()),
        validated: None,
        challenge,
    };
    state.repo.put_ownership(&record).await.map_err(repo_err)?;
    tracing::info!(%account, ownership = %record.id, destination = %record.destination_conf, "ownership challenge written");
    Ok(envelope(record.to_api()))
}

/// Compares the text the user read from the challenge file. A wrong text answers 400 and
/// marks the ownership `failed`; the right text later still validates it.
async fn validate_ownership(
    State(state): State<Arc<AppState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let (destination, challenge) = parse_ownership_validate(&body)?;
    let records = state.repo.list_ownerships(&account).await.map_err(repo_err)?;
    let mut candidates: Vec<OwnershipRecord> =
        records.into_iter().filter(|o| o.destination_conf == destination.uri).collect();
    if candidates.is_empty() {
        return Err(ApiError::not_found(
            code::OWNERSHIP_NOT_FOUND,
            format!("destination_conf: no ownership challenge for {:?}; create one first", destination.uri),
        ));
    }
    candidates.sort_by(|a, b| b.submitted.cmp(&a.submitted));
    let now = rfc3339(time::OffsetDateTime::now_utc());
    let matched = candidates.iter().find(|o| {
        aws_lc_rs::constant_time::verify_slices_are_equal(o.challenge.as_bytes(), challenge.as_bytes()).is_ok()
    });
    match matched {
        Some(found) => {
            let mut record = found.clone();
            record.status = OwnershipStatus::Success;
            record.validated = Some(now);
            state.repo.put_ownership(&record).await.map_err(repo_err)?;
            tracing::info!(%account, ownership = %record.id, "bucket ownership validated");
            Ok(envelope(record.to_api()))
        }
        None => {
            for record in candidates.iter_mut().filter(|o| o.status == OwnershipStatus::Pending) {
                record.status = OwnershipStatus::Failed;
                state.repo.put_ownership(record).await.map_err(repo_err)?;
            }
            Err(ApiError::bad_request(
                code::CHALLENGE_MISMATCH,
                "ownership_challenge: does not match the text of the challenge file written into the bucket",
            ))
        }
    }
}

async fn delete_ownership(
    State(state): State<Arc<AppState>>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let not_found = || ApiError::not_found(code::OWNERSHIP_NOT_FOUND, format!("ownership_id: {id:?} not found"));
    if !is_id(&id) || state.repo.get_ownership(&account, &id).await.map_err(repo_err)?.is_none() {
        return Err(not_found());
    }
    state.repo.delete_ownership(&account, &id).await.map_err(repo_err)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Operator extension: connected agents (any valid token).
async fn list_agents(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if state.repo.account_for_token(bearer).await.map_err(repo_err)?.is_none() {
        return Err(ApiError::unauthorized("Authorization: a valid Bearer API token is required"));
    }
    // Every replica's agents (shared presence keys); lookback counters for those connected here.
    let local: std::collections::HashMap<String, crate::control::AgentInfo> =
        state.registry.agents().into_iter().map(|a| (a.agent_id.clone(), a)).collect();
    let mut present = state.repo.list_agents().await.map_err(repo_err)?;
    present.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
    let agents: Vec<Value> = present
        .into_iter()
        .map(|p| {
            let mut v = json!({
                "agent_id": p.agent_id, "pop": p.pop, "interfaces": p.interfaces, "version": p.version,
                "coordinator": p.coordinator, "connected_at": p.connected_at,
            });
            if let Some(a) = local.get(&p.agent_id) {
                v["sample_rate"] = json!(a.sample_rate);
                v["lookback"] = json!({
                    "packets_seen": a.lookback.packets_seen, "packets_held": a.lookback.packets_held,
                    "bytes_held": a.lookback.bytes_held, "kernel_dropped": a.lookback.kernel_dropped,
                    "packets_evicted": a.lookback.packets_evicted,
                });
            }
            v
        })
        .collect();
    Ok(collection(agents))
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

/// The web page: static, no inline script, strict CSP; it talks to the API like any client.
const WEB_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'";

async fn web_index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, WEB_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("web/index.html"),
    )
        .into_response()
}

async fn web_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        include_str!("web/app.js"),
    )
        .into_response()
}

/// One span per API request (exported with traces), named after the route.
async fn trace_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument as _;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("api", method = %request.method(), route = %route, status = tracing::field::Empty);
    let response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    response
}

pub fn router(state: Arc<AppState>) -> Router {
    let base = "/client/v4/accounts/{account_id}/pcaps";
    Router::new()
        .route(base, get(list_captures).post(create_capture))
        .route(&format!("{base}/ownership"), get(list_ownerships).post(create_ownership))
        .route(&format!("{base}/ownership/validate"), post(validate_ownership))
        .route(&format!("{base}/ownership/{{ownership_id}}"), delete(delete_ownership))
        .route(&format!("{base}/{{pcap_id}}"), get(get_capture))
        .route(&format!("{base}/{{pcap_id}}/download"), get(download))
        .route(&format!("{base}/{{pcap_id}}/stop"), put(stop))
        .route("/edgecap/v1/agents", get(list_agents))
        .route("/healthz", get(healthz))
        .route("/", get(web_index))
        .route("/app.js", get(web_script))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn(trace_request))
        .with_state(state)
}
