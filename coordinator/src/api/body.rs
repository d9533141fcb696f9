//! Request bodies, read only after the caller is authenticated and only up to
//! [`MAX_BODY`]: every body the API takes is a small JSON object.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

use super::error::{ApiError, code};

/// Largest request body the API reads.
pub(crate) const MAX_BODY: usize = 64 << 10;

/// A request body of at most [`MAX_BODY`] bytes.
#[derive(Debug)]
pub(crate) struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        axum::body::to_bytes(request.into_body(), MAX_BODY).await.map(Body).map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::BODY_TOO_LARGE,
                format!("request body: larger than {MAX_BODY} bytes (or not read whole)"),
            )
        })
    }
}
