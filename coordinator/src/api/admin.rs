//! The admin API (`/edgecap/v1/admin/...`, admin tokens only): API tokens, created and
//! revoked by name, in force on every replica.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Admin;
use super::body::Body;
use super::error::{ApiError, code};
use super::validate::{parse_object, string};
use super::{ApiState, collection, envelope, repo_err};
use crate::tokens::TokenError;

fn token_error(e: TokenError) -> ApiError {
    match e {
        TokenError::BadName(_) | TokenError::BadAccount(_) => ApiError::bad_request(code::INVALID_VALUE, e.to_string()),
        TokenError::NameTaken(_) => ApiError::new(StatusCode::CONFLICT, code::INVALID_VALUE, e.to_string()),
        TokenError::Store(e) => repo_err(e),
        TokenError::File(..) | TokenError::Random => ApiError::internal(e.to_string()),
    }
}

pub(super) async fn list_tokens(State(state): State<Arc<ApiState>>, _admin: Admin) -> Result<Response, ApiError> {
    let tokens = state.tokens.list().await.map_err(token_error)?;
    Ok(collection(tokens.iter().map(|t| json!(t)).collect()))
}

/// `{"account_id", "name"}` -> the token (shown this once) and its record.
pub(super) async fn create_token(
    State(state): State<Arc<ApiState>>,
    _admin: Admin,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let map = parse_object(&body)?;
    let field = |name: &str| {
        map.get(name)
            .ok_or_else(|| ApiError::bad_request(code::MISSING_FIELD, format!("{name}: required")))
            .and_then(|v| string(name, v))
    };
    let (account, name) = (field("account_id")?, field("name")?);
    let (token, info) = state.tokens.create(account, name).await.map_err(token_error)?;
    let mut result = json!(info);
    result["token"] = json!(token);
    Ok(envelope(result))
}

pub(super) async fn revoke_token(
    State(state): State<Arc<ApiState>>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if !state.tokens.revoke(&name).await.map_err(token_error)? {
        return Err(ApiError::not_found(code::NOT_FOUND, format!("name: no token named {name:?}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
