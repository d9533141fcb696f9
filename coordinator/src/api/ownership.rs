//! `/pcaps/ownership`: prove a bucket is the account's by reading back a challenge file the
//! coordinator writes into it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::auth::Account;
use super::body::Body;
use super::error::{ApiError, code};
use super::validate::{parse_ownership_create, parse_ownership_validate};
use super::{ApiState, collection, envelope, repo_err};
use crate::model::{OwnershipRecord, OwnershipStatus, is_id, new_id, rfc3339};

/// Bucket ownerships (validated or not) an account may hold.
const MAX_OWNERSHIPS: usize = 100;

/// The user's bucket could not be reached (retry later): 503 naming the field. The details
/// are logged, not returned.
fn bucket_error() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        code::STORAGE_UNAVAILABLE,
        "destination_conf: the bucket could not be reached; try again later",
    )
}

#[utoipa::path(get, path = "/client/v4/accounts/{account_id}/pcaps/ownership", tag = "pcaps", operation_id = "list_ownerships",
    params(("account_id" = String, Path, description = "The account")),
    responses((status = 200, description = "The account's ownerships", body = crate::api::openapi::OwnershipListEnvelope), crate::api::openapi::Errors))]
pub(super) async fn list(State(state): State<Arc<ApiState>>, Account(account): Account) -> Result<Response, ApiError> {
    let records = state.repo.list_ownerships(&account).await.map_err(repo_err)?;
    Ok(collection(records.iter().map(|r| r.to_api()).collect()))
}

/// Writes `ownership-challenge-<id>.txt` with a random secret into the bucket. Whoever can
/// read it back owns (or is trusted by the owner of) the bucket.
#[utoipa::path(post, path = "/client/v4/accounts/{account_id}/pcaps/ownership", tag = "pcaps", operation_id = "create_ownership",
    params(("account_id" = String, Path, description = "The account")),
    request_body(content = crate::api::openapi::OwnershipCreate, content_type = "application/json"),
    responses((status = 200, description = "The ownership challenge, written into the bucket", body = crate::api::openapi::OwnershipEnvelope,
        links(("DeleteOwnership" = (operation_id = "delete_ownership", parameters(("ownership_id" = "$response.body#/result/id"), ("account_id" = "$request.path.account_id")))))),
        crate::api::openapi::Errors))]
pub(super) async fn create(
    State(state): State<Arc<ApiState>>,
    Account(account): Account,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let destination = parse_ownership_create(&body)?;
    let held = state.repo.list_ownerships(&account).await.map_err(repo_err)?.len();
    if held >= MAX_OWNERSHIPS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code::LIMIT_REACHED,
            format!(
                "destination_conf: this account has {held} bucket ownerships, the most it may (limit {MAX_OWNERSHIPS}); delete one first"
            ),
        ));
    }
    state.full.check_endpoint(&destination).await.map_err(|e| ApiError::bad_request(code::INVALID_VALUE, e))?;
    let id = new_id();
    let filename = OwnershipRecord::challenge_file(&id);
    let challenge = format!("{}{}", new_id(), new_id());
    let store = state.full.store_for(&destination).await.map_err(|e| {
        tracing::warn!(%account, destination = %destination.uri, error = %e, "bucket client not made");
        bucket_error()
    })?;
    use edgecap_storage::ObjectStore as _;
    if let Err(e) = store.put(&filename, Bytes::from(format!("{challenge}\n"))).await {
        // What the endpoint answered stays in the coordinator's log: it may be any server's
        // answer, not the user's to read.
        tracing::warn!(%account, destination = %destination.uri, error = %e, "ownership challenge not written");
        return Err(match e {
            e if e.is_retryable() => bucket_error(),
            _ => ApiError::bad_request(
                code::BUCKET_UNWRITABLE,
                "destination_conf: the bucket refused the ownership challenge (check the bucket's name and region, and that the coordinator has credentials for it)",
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
#[utoipa::path(post, path = "/client/v4/accounts/{account_id}/pcaps/ownership/validate", tag = "pcaps", operation_id = "validate_ownership",
    params(("account_id" = String, Path, description = "The account")),
    request_body(content = crate::api::openapi::OwnershipValidate, content_type = "application/json"),
    responses((status = 200, description = "The ownership, validated", body = crate::api::openapi::OwnershipEnvelope), crate::api::openapi::Errors))]
pub(super) async fn validate(
    State(state): State<Arc<ApiState>>,
    Account(account): Account,
    Body(body): Body,
) -> Result<Response, ApiError> {
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

#[utoipa::path(delete, path = "/client/v4/accounts/{account_id}/pcaps/ownership/{ownership_id}", tag = "pcaps", operation_id = "delete_ownership",
    params(("account_id" = String, Path, description = "The account"), ("ownership_id" = String, Path, description = "The ownership's id", pattern = "^[0-9a-f]{32}$")),
    responses(crate::api::openapi::Deleted, crate::api::openapi::Errors))]
pub(super) async fn delete(
    State(state): State<Arc<ApiState>>,
    Account(account): Account,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(code::OWNERSHIP_NOT_FOUND, format!("ownership_id: {id:?} not found"));
    if !is_id(&id) || state.repo.get_ownership(&account, &id).await.map_err(repo_err)?.is_none() {
        return Err(not_found());
    }
    state.repo.delete_ownership(&account, &id).await.map_err(repo_err)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
