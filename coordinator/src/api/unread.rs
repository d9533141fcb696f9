//! A response to a request whose body was not read to its end says `Connection: close`.
//!
//! hyper does not reuse such a connection (the unread body is still on it), but without the
//! header a client may send its next request on it before the close reaches it, and loses
//! that request ("connection closed without response"). Refusals that come before the body
//! is read (authentication, an unknown route or method, a bad content type) are the usual
//! case. Found by Schemathesis under load.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::CONNECTION;
use axum::middleware::Next;
use axum::response::Response;
use http_body::Frame;

/// A request body that records when it has been read to its end.
struct Watched {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The middleware: see the module's documentation.
pub(super) async fn close_if_unread(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let ended = Arc::new(AtomicBool::new(http_body::Body::is_end_stream(&body)));
    let watched = Body::new(Watched { inner: body, ended: ended.clone() });
    let mut response = next.run(Request::from_parts(parts, watched)).await;
    if !ended.load(Ordering::Relaxed) {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::post;
    use tower::ServiceExt as _;

    use super::*;

    async fn app(read: bool) -> Router {
        let handler = move |request: Request| async move {
            if read {
                let _ = axum::body::to_bytes(request.into_body(), 1 << 20).await;
            }
            "ok"
        };
        Router::new().route("/", post(handler)).layer(axum::middleware::from_fn(close_if_unread))
    }

    async fn connection(read: bool, body: &'static str) -> Option<String> {
        let request = Request::post("/").body(Body::from(body)).unwrap();
        let response = app(read).await.oneshot(request).await.unwrap();
        response.headers().get(CONNECTION).map(|v| v.to_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn only_a_response_that_left_the_body_unread_closes_the_connection() {
        assert_eq!(connection(false, "{\"x\": 1}").await.as_deref(), Some("close"));
        assert_eq!(connection(true, "{\"x\": 1}").await, None);
        assert_eq!(connection(false, "").await, None, "no body: nothing left on the connection");
    }
}
