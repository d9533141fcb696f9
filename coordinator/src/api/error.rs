//! Cloudflare-style API errors: a real HTTP status, `success: false`, and one error with a
//! stable numeric code and a message naming the field. The official SDKs raise only on
//! non-2xx statuses, so every error is a 4xx (or 503 when state is unreachable).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Stable error codes. Documented in `docs/api.md`; never renumbered.
pub mod code {
    pub const INVALID_JSON: u32 = 1001;
    pub const MISSING_FIELD: u32 = 1002;
    pub const WRONG_TYPE: u32 = 1003;
    pub const OUT_OF_RANGE: u32 = 1004;
    pub const INVALID_VALUE: u32 = 1005;
    pub const NOT_APPLICABLE: u32 = 1006;
    pub const UNKNOWN_FIELD: u32 = 1007;
    pub const CAPTURE_NOT_FOUND: u32 = 1100;
    pub const OWNERSHIP_NOT_FOUND: u32 = 1101;
    pub const NOT_READY: u32 = 1102;
    pub const NOT_STOPPABLE: u32 = 1103;
    pub const ACCOUNT_NOT_FOUND: u32 = 1104;
    pub const NOT_DOWNLOADABLE: u32 = 1105;
    pub const RATE_LIMITED: u32 = 1200;
    pub const FULL_CAPTURE_RUNNING: u32 = 1201;
    pub const BUCKET_NOT_VALIDATED: u32 = 1106;
    pub const BUCKET_UNWRITABLE: u32 = 1107;
    pub const CHALLENGE_MISMATCH: u32 = 1108;
    pub const UNAVAILABLE_FEATURE: u32 = 1300;
    pub const STATE_UNAVAILABLE: u32 = 1500;
    pub const STORAGE_UNAVAILABLE: u32 = 1501;
    pub const INTERNAL: u32 = 1502;
    pub const METHOD_NOT_ALLOWED: u32 = 7001;
    pub const NO_ROUTE: u32 = 7003;
    pub const AUTHENTICATION: u32 = 10000;
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
