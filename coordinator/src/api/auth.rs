//! Who is calling: `Authorization: Bearer <token>`, parsed in one place, and the axum
//! extractors that handlers take instead of checking by hand. They run before the body is
//! read, so an unauthenticated request never gets its body parsed.

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::ApiState;
use super::error::{ApiError, code};
use super::repo_err;

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = value
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty());
    match token {
        Some(token) => Ok(token),
        None if headers.contains_key("x-auth-key") || headers.contains_key("x-auth-email") => {
            Err(ApiError::unauthorized(
                "X-Auth-Email/X-Auth-Key are not supported: use an API token (Authorization: Bearer <token>)",
            ))
        }
        None => Err(ApiError::unauthorized("Authorization: a Bearer API token is required")),
    }
}

/// The account of the path (`{account_id}`), when the caller's token is bound to it. Another
/// account's resources answer 404: their existence is not revealed.
#[derive(Debug)]
pub(crate) struct Account(pub String);

impl FromRequestParts<Arc<ApiState>> for Account {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found(code::NO_ROUTE, "No route for the URI"))?;
        let account = params
            .iter()
            .find(|(name, _)| *name == "account_id")
            .map(|(_, value)| value.to_string())
            .ok_or_else(|| ApiError::internal("route without {account_id} uses the Account extractor"))?;
        let token = bearer(&parts.headers)?;
        match state.repo.account_for_token(token).await.map_err(repo_err)? {
            None => Err(ApiError::unauthorized("Authorization: invalid API token")),
            Some(owner) if owner == account => Ok(Account(account)),
            Some(_) => Err(ApiError::not_found(code::ACCOUNT_NOT_FOUND, format!("account_id: {account:?} not found"))),
        }
    }
}

/// Any valid token (operator extensions that are not per account, like the agent list).
#[derive(Debug)]
pub(crate) struct AnyAccount;

impl FromRequestParts<Arc<ApiState>> for AnyAccount {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        match state.repo.account_for_token(token).await.map_err(repo_err)? {
            Some(_) => Ok(AnyAccount),
            None => Err(ApiError::unauthorized("Authorization: a valid Bearer API token is required")),
        }
    }
}

/// An admin token: the admin API only. An account's token is refused with 403 (it is
/// valid, it may just not do this).
#[derive(Debug)]
pub(crate) struct Admin;

impl FromRequestParts<Arc<ApiState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        if state.tokens.is_admin(token) {
            return Ok(Admin);
        }
        if state.repo.account_for_token(token).await.map_err(repo_err)?.is_some() {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                code::ADMIN_ONLY,
                "Authorization: this is an account's token; the admin API takes an admin token",
            ));
        }
        Err(ApiError::unauthorized("Authorization: invalid admin token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_in_one_way() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert_eq!(bearer(&with("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(&with("bearer  abc ")).unwrap(), "abc");
        assert_eq!(bearer(&with("BEARER abc")).unwrap(), "abc");
        assert!(bearer(&with("Basic abc")).is_err());
        assert!(bearer(&with("Bearer ")).is_err());
        assert!(bearer(&HeaderMap::new()).unwrap_err().message.contains("Bearer API token is required"));
        let mut legacy = HeaderMap::new();
        legacy.insert("x-auth-key", "k".parse().unwrap());
        assert!(bearer(&legacy).unwrap_err().message.contains("X-Auth-Key"));
    }
}
