//! Account scopes over the API: the operator's admin routes
//! (`/edgecap/v1/admin/accounts[/{account}]`, admin tokens only) and an account's view of
//! its own scope (`/edgecap/v1/accounts/{account_id}/scope`, its own token).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::{Account, Admin};
use super::body::Body;
use super::error::{ApiError, code};
use super::validate::parse_object;
use super::{ApiState, collection, envelope, repo_err};
use crate::model::AccountScope;

fn view(account: &str, scope: &AccountScope) -> Value {
    json!({
        "account_id": account,
        "unrestricted": scope.unrestricted,
        "prefixes": scope.prefixes,
        "pops": scope.pops,
        "updated": scope.updated,
        "source": scope.source,
    })
}

pub(super) async fn list(State(state): State<Arc<ApiState>>, _admin: Admin) -> Result<Response, ApiError> {
    let scopes = state.repo.list_account_scopes().await.map_err(repo_err)?;
    Ok(collection(scopes.iter().map(|(a, s)| view(a, s)).collect()))
}

pub(super) async fn get(
    State(state): State<Arc<ApiState>>,
    _admin: Admin,
    Path(account): Path<String>,
) -> Result<Response, ApiError> {
    match state.repo.get_account_scope(&account).await.map_err(repo_err)? {
        Some(scope) => Ok(envelope(view(&account, &scope))),
        None => Err(ApiError::not_found(code::NOT_FOUND, format!("account_id: no scope is set for {account:?}"))),
    }
}

/// `{"prefixes": [...], "pops": [...]}` or `{"unrestricted": true, "pops": [...]}`.
pub(super) async fn put(
    State(state): State<Arc<ApiState>>,
    _admin: Admin,
    Path(account): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let map = parse_object(&body)?;
    for key in map.keys() {
        if !["prefixes", "pops", "unrestricted"].contains(&key.as_str()) {
            return Err(ApiError::bad_request(code::UNKNOWN_FIELD, format!("{key}: not a field of an account scope")));
        }
    }
    let strings = |name: &str| -> Result<Option<Vec<String>>, ApiError> {
        match map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::bad_request(code::WRONG_TYPE, format!("{name}: must be an array of strings"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(ApiError::bad_request(code::WRONG_TYPE, format!("{name}: must be an array of strings"))),
        }
    };
    let unrestricted = match map.get("unrestricted") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request(code::WRONG_TYPE, "unrestricted: must be true or false")),
    };
    let mut scope = AccountScope::unrestricted();
    scope.unrestricted = unrestricted;
    scope.prefixes = strings("prefixes")?.unwrap_or_default();
    if let Some(pops) = strings("pops")? {
        scope.pops = pops;
    }
    let stored = crate::accounts::set(&state.repo, &account, scope, "api")
        .await
        .map_err(|message| ApiError::bad_request(code::INVALID_VALUE, message))?;
    Ok(envelope(view(&account, &stored)))
}

pub(super) async fn delete(
    State(state): State<Arc<ApiState>>,
    _admin: Admin,
    Path(account): Path<String>,
) -> Result<Response, ApiError> {
    if !state.repo.delete_account_scope(&account).await.map_err(repo_err)? {
        return Err(ApiError::not_found(code::NOT_FOUND, format!("account_id: no scope is set for {account:?}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The calling account's own scope: what its captures are restricted to.
#[utoipa::path(get, path = "/edgecap/v1/accounts/{account_id}/scope", tag = "edgecap", operation_id = "get_own_scope",
    params(("account_id" = String, Path, description = "The account")),
    responses((status = 200, description = "The account's own scope", body = crate::api::openapi::ScopeEnvelope), crate::api::openapi::Errors))]
pub(super) async fn own(State(state): State<Arc<ApiState>>, Account(account): Account) -> Result<Response, ApiError> {
    match crate::accounts::resolve(&state.repo, &account, state.unscoped).await {
        Ok(scope) => Ok(envelope(view(&account, &scope))),
        Err(crate::accounts::ScopeError::Unscoped(_)) => Ok(envelope(json!({
            "account_id": account, "unrestricted": false, "prefixes": [], "pops": [],
            "note": "no scope is set: this account may capture nothing yet",
        }))),
        Err(crate::accounts::ScopeError::Store(e)) => Err(repo_err(e)),
    }
}
