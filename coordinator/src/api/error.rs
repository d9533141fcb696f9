//! Cloudflare-style API errors: a real HTTP status, `success: false`, and one error with a
//! stable numeric code and a message naming the field. The official SDKs raise only on
//! non-2xx statuses, so every error is a 4xx (or 503 when state is unreachable).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Stable error codes. Documented in `docs/api.md`; never renumbered.
pub mod code {
    /// The body is not a JSON object.
    pub const INVALID_JSON: u32 = 1001;
    /// A required field is missing (or null).
    pub const MISSING_FIELD: u32 = 1002;
    /// A field has the wrong JSON type.
    pub const WRONG_TYPE: u32 = 1003;
    /// A number (or a time, a prefix length) is outside its allowed range.
    pub const OUT_OF_RANGE: u32 = 1004;
    /// A field's value is not acceptable (a bad address, an unknown colo, ...).
    pub const INVALID_VALUE: u32 = 1005;
    /// A field that does not apply to this capture type was given.
    pub const NOT_APPLICABLE: u32 = 1006;
    /// An unknown field inside `filter_v1` (a misspelling would widen a capture).
    pub const UNKNOWN_FIELD: u32 = 1007;
    /// The request body is larger than the API takes (413).
    pub const BODY_TOO_LARGE: u32 = 1008;
    /// No such capture in this account.
    pub const CAPTURE_NOT_FOUND: u32 = 1100;
    /// No such bucket ownership in this account.
    pub const OWNERSHIP_NOT_FOUND: u32 = 1101;
    /// No such record (a token, an account) on the admin API.
    pub const NOT_FOUND: u32 = 1109;
    /// The capture has no file to download (yet, or it failed).
    pub const NOT_READY: u32 = 1102;
    /// The capture cannot be stopped (a sample, or already finished).
    pub const NOT_STOPPABLE: u32 = 1103;
    /// The path's account is not the token's.
    pub const ACCOUNT_NOT_FOUND: u32 = 1104;
    /// Full captures are delivered to their bucket, not through the API.
    pub const NOT_DOWNLOADABLE: u32 = 1105;
    /// Too many sample captures in the account's interval.
    pub const RATE_LIMITED: u32 = 1200;
    /// The account already has its maximum of active full captures.
    pub const FULL_CAPTURE_RUNNING: u32 = 1201;
    /// The account holds the most records of a kind it may (422; delete one first).
    pub const LIMIT_REACHED: u32 = 1202;
    /// The account may not capture this: no scope yet, or a PoP outside it.
    pub const OUT_OF_SCOPE: u32 = 1203;
    /// The bucket's ownership has not been validated for this account.
    pub const BUCKET_NOT_VALIDATED: u32 = 1106;
    /// The ownership challenge could not be written into the bucket.
    pub const BUCKET_UNWRITABLE: u32 = 1107;
    /// The text given is not the challenge file's.
    pub const CHALLENGE_MISMATCH: u32 = 1108;
    /// The feature is not configured on this coordinator.
    pub const UNAVAILABLE_FEATURE: u32 = 1300;
    /// The state store cannot be reached now (503; retry).
    pub const STATE_UNAVAILABLE: u32 = 1500;
    /// The object store or bucket cannot be reached now (503; retry).
    pub const STORAGE_UNAVAILABLE: u32 = 1501;
    /// A bug or damaged data (500).
    pub const INTERNAL: u32 = 1502;
    /// The request took longer than the API allows (503; retry).
    pub const TIMEOUT: u32 = 1503;
    /// The route exists but not with this method.
    pub const METHOD_NOT_ALLOWED: u32 = 7001;
    /// No such route.
    pub const NO_ROUTE: u32 = 7003;
    /// No token, an unknown token, or an unsupported scheme.
    pub const AUTHENTICATION: u32 = 10000;
    /// A valid token that may not call this (an account's token on the admin API).
    pub const ADMIN_ONLY: u32 = 10001;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }
    pub(crate) fn bad_request(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub(crate) fn not_found(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code::AUTHENTICATION, message)
    }
    pub(crate) fn state(error: &edgecap_state::StateError) -> Self {
        tracing::warn!(%error, "state store error answered as 503");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code::STATE_UNAVAILABLE, format!("state store unavailable: {error}"))
    }
    pub(crate) fn storage(error: &edgecap_storage::StorageError) -> Self {
        tracing::warn!(%error, "object store error answered as 503");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::STORAGE_UNAVAILABLE,
            format!("object store unavailable: {error}"),
        )
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(%message, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "success": false,
            "errors": [{"code": self.code, "message": self.message}],
            "messages": [],
            "result": null,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        } else if self.status == StatusCode::CONFLICT {
            // The SDKs retry 409 by default; these conflicts do not resolve by retrying.
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}
