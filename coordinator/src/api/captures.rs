//! `/pcaps`: list, create, get, download and stop captures.

use std::sync::Arc;

use axum::body::Body as ResponseBody;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::Account;
use super::body::Body;
use super::error::{ApiError, code};
use super::validate::parse_create;
use super::{ApiState, collection, envelope, repo_err};
use crate::full::PlanError;
use crate::model::{CaptureRecord, CaptureStatus, CaptureType, is_id, rfc3339};

/// Longest a request's validation (a `filter_bpf` compile) may take.
const VALIDATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) async fn find(state: &ApiState, account: &str, id: &str) -> Result<CaptureRecord, ApiError> {
    let not_found = || ApiError::not_found(code::CAPTURE_NOT_FOUND, format!("pcap_id: {id:?} not found"));
    if !is_id(id) {
        return Err(not_found());
    }
    let record = state.repo.get_capture(account, id).await.map_err(repo_err)?.ok_or_else(not_found)?;
    // Past its retention it is gone, whether or not the sweep has deleted it yet.
    if crate::retention::expired(&record, state.retention, time::OffsetDateTime::now_utc()) {
        return Err(not_found());
    }
    Ok(record)
}

#[utoipa::path(get, path = "/client/v4/accounts/{account_id}/pcaps", tag = "pcaps", operation_id = "list_pcaps",
    params(("account_id" = String, Path, description = "The account")),
    responses((status = 200, description = "Captures, newest first", body = crate::api::openapi::CaptureListEnvelope), crate::api::openapi::Errors))]
pub(super) async fn list(State(state): State<Arc<ApiState>>, Account(account): Account) -> Result<Response, ApiError> {
    let records = state.repo.list_captures(&account).await.map_err(repo_err)?;
    let now = time::OffsetDateTime::now_utc();
    // Cloudflare returns up to 50 requests, newest first.
    Ok(collection(
        records
            .iter()
            .filter(|r| !crate::retention::expired(r, state.retention, now))
            .take(50)
            .map(CaptureRecord::to_api)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/client/v4/accounts/{account_id}/pcaps", tag = "pcaps", operation_id = "create_pcap",
    params(("account_id" = String, Path, description = "The account")),
    request_body(content = crate::api::openapi::CaptureCreate, content_type = "application/json"),
    responses((status = 200, description = "The capture, accepted (with `dry_run`: what it would do, see docs/api.md)", body = crate::api::openapi::CreateAnswer,
        links(("GetPcapById" = (operation_id = "get_pcap", parameters(("pcap_id" = "$response.body#/result/id"), ("account_id" = "$request.path.account_id")))))),
        crate::api::openapi::Errors))]
pub(super) async fn create(
    State(state): State<Arc<ApiState>>,
    Account(account): Account,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    // Validation compiles a `filter_bpf` with libpcap: on a blocking thread, within a bound.
    let limits = state.limits.clone();
    let parsing = tokio::task::spawn_blocking(move || parse_create(&body, &limits, now));
    let request = match tokio::time::timeout(VALIDATION_TIMEOUT, parsing).await {
        Ok(Ok(parsed)) => parsed?,
        Ok(Err(e)) => return Err(ApiError::internal(format!("validation thread: {e}"))),
        Err(_) => {
            return Err(ApiError::bad_request(
                code::INVALID_VALUE,
                format!("filter_bpf: did not compile within {} s; simplify it", VALIDATION_TIMEOUT.as_secs()),
            ));
        }
    };
    // What the account may capture, read now: a change takes effect from the next capture on.
    let scope = crate::accounts::resolve(&state.repo, &account, state.unscoped).await.map_err(|e| match e {
        crate::accounts::ScopeError::Unscoped(_) => {
            ApiError::new(StatusCode::FORBIDDEN, code::OUT_OF_SCOPE, e.to_string())
        }
        crate::accounts::ScopeError::Store(e) => repo_err(e),
    })?;
    let scope = scope.capture_scope();
    if request.dry_run {
        return super::dry_run::answer(&state, &account, request, scope).await;
    }
    if request.capture_type == CaptureType::Full {
        let record = state
            .full
            .create(&account, request, now, state.rate_limits.max_active_full, scope)
            .await
            .map_err(plan_error)?;
        state.metrics.capture_created(CaptureType::Full);
        return Ok(envelope(record.to_api()));
    }
    state.rate.check_sample(&account, state.rate_limits.sample_interval)?;
    let max = state.limits.max_running_samples_per_account;
    let place = state.samples.reserve(&account, max).map_err(|running| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            code::LIMIT_REACHED,
            format!("type: this account has {running} sample capture(s) running; at most {max} run at once"),
        )
    })?;
    let mut record = CaptureRecord::from_request(&account, request, now);
    record.scope = Some(scope);
    state.repo.create_capture(&record).await.map_err(repo_err)?;
    tracing::info!(account = %account, capture = %record.id, "sample capture accepted");
    state.samples.start_reserved(place, record.id.clone());
    state.metrics.capture_created(CaptureType::Simple);
    Ok(envelope(record.to_api()))
}

pub(super) fn plan_error(e: PlanError) -> ApiError {
    let message = e.to_string();
    match e {
        PlanError::MissingDestination => ApiError::bad_request(code::MISSING_FIELD, message),
        PlanError::Endpoint(_) => ApiError::bad_request(code::INVALID_VALUE, message),
        PlanError::NotValidated(_) => ApiError::new(StatusCode::FORBIDDEN, code::BUCKET_NOT_VALIDATED, message),
        PlanError::TooManyActive { .. } => ApiError::new(StatusCode::CONFLICT, code::FULL_CAPTURE_RUNNING, message),
        PlanError::OutOfScope { .. } => ApiError::new(StatusCode::FORBIDDEN, code::OUT_OF_SCOPE, message),
        PlanError::PopBusy { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, code::LIMIT_REACHED, message),
        PlanError::UnknownColo { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code::INVALID_VALUE, message),
        PlanError::NoAgents(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code::INVALID_VALUE, message),
        PlanError::Bucket(error) => {
            tracing::warn!(%error, "bucket unreachable");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code::STORAGE_UNAVAILABLE, message)
        }
        PlanError::Store(e) => repo_err(e),
    }
}

#[utoipa::path(get, path = "/client/v4/accounts/{account_id}/pcaps/{pcap_id}", tag = "pcaps", operation_id = "get_pcap",
    params(("account_id" = String, Path, description = "The account"), ("pcap_id" = String, Path, description = "The capture's id (32 hex)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The capture (a full capture's per-PoP shards included)", body = crate::api::openapi::CaptureEnvelope), crate::api::openapi::Errors))]
pub(super) async fn get(
    State(state): State<Arc<ApiState>>,
    Account(account): Account,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut record = find(&state, &account, &id).await?;
    // (Not in the list of captures, which stays one read.)
    if record.capture_type == CaptureType::Full {
        crate::full::current_view(&state.repo, &mut record).await.map_err(repo_err)?;
    }
    Ok(super::envelope_of(&record.api_view()))
}

#[utoipa::path(get, path = "/client/v4/accounts/{account_id}/pcaps/{pcap_id}/download", tag = "pcaps", operation_id = "download_pcap",
    params(("account_id" = String, Path, description = "The account"), ("pcap_id" = String, Path, description = "The capture's id", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The sample capture's file", content_type = "application/vnd.tcpdump.pcap", body = Vec<u8>), crate::api::openapi::Errors))]
pub(super) async fn download(
    State(state): State<Arc<ApiState>>,
    Account(account): Account,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let record = find(&state, &account, &id).await?;
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
    let (meta, reader) = state.objects.get(&key).await.map_err(|e| ApiError::storage(&e))?;
    let body = ResponseBody::from_stream(tokio_util::io::ReaderStream::new(reader));
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

#[utoipa::path(put, path = "/client/v4/accounts/{account_id}/pcaps/{pcap_id}/stop", tag = "pcaps", operation_id = "stop_pcap",
    params(("account_id" = String, Path, description = "The account"), ("pcap_id" = String, Path, description = "The full capture's id", pattern = "^[0-9a-f]{32}$")),
    responses(crate::api::openapi::Deleted, crate::api::openapi::Errors))]
pub(super) async fn stop(
    State(state): State<Arc<ApiState>>,
    Account(account): Account,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let record = find(&state, &account, &id).await?;
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
    state.full.request_stop(&record).await.map_err(repo_err)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
