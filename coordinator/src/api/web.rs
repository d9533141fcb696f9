//! The web page: static, no inline script, strict CSP; it talks to the API like any client.
//!
//! Everything ships inside the binary: `web/index.html` (markup and its stylesheet) at `/`,
//! and at `/app.js` the page's scripts, one source per responsibility, served as one classic
//! script in the order they depend on each other (they share its top-level scope): the
//! pcap/pcapng reader, the API client and form errors, captures, the packet preview, agents,
//! bucket ownership, and `app.js`, the entry (views, signing in), last.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Scripts only from this origin (no inline script, no `eval`); the favicon is an inline SVG
/// (`data:`); downloads are `blob:` URLs made by the page itself.
const WEB_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

const SCRIPT: &str = concat!(
    include_str!("web/pcap.js"),
    include_str!("web/api.js"),
    include_str!("web/captures.js"),
    include_str!("web/preview.js"),
    include_str!("web/agents.js"),
    include_str!("web/ownership.js"),
    include_str!("web/app.js"),
);

pub(super) async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, WEB_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("web/index.html"),
    )
        .into_response()
}

pub(super) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}
