//! The OpenAPI 3.1 document of the API, generated from the handlers' `#[utoipa::path]`
//! annotations and the schema types below (which describe the JSON the handlers write).
//! Served at `/client/v4/openapi.json`; `edgecap-coordinator --openapi` prints it, and
//! `docs/openapi.json` is that output (a test checks they agree). Operations outside
//! Cloudflare's API carry `x-edgecap-extension: true`, as do extension fields in their
//! descriptions.

#![allow(dead_code, reason = "schema types are read by the OpenAPI derive, not constructed")]

mod schemas;

pub(crate) use schemas::*;

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

macro_rules! envelope {
    ($name:ident, $result:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(ToSchema)]
        pub(crate) struct $name {
            success: bool,
            errors: Vec<ApiErrorItem>,
            messages: Vec<Value>,
            result: $result,
        }
    };
    ($name:ident, list $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(ToSchema)]
        pub(crate) struct $name {
            success: bool,
            errors: Vec<ApiErrorItem>,
            messages: Vec<Value>,
            result: Vec<$item>,
            result_info: ResultInfo,
        }
    };
}

envelope!(CaptureEnvelope, Capture, "One capture.");
envelope!(DryRunEnvelope, DryRun, "A dry run's answer.");
envelope!(CaptureListEnvelope, list Capture, "Captures, newest first (up to 50).");
envelope!(OwnershipEnvelope, Ownership, "One ownership.");
envelope!(OwnershipListEnvelope, list Ownership, "The account's ownerships.");
envelope!(AgentListEnvelope, list Agent, "Connected agents.");
envelope!(ScopeEnvelope, Scope, "An account's scope.");
envelope!(ScopeListEnvelope, list Scope, "Every account's scope.");
envelope!(ObjectEnvelope, Option<Object>, "An object (see docs/api.md).");
envelope!(ObjectListEnvelope, list Object, "A list of objects (see docs/api.md).");

/// Any JSON object.
#[derive(ToSchema)]
#[schema(value_type = Object)]
pub(crate) struct Object(BTreeMap<String, Value>);

/// Errors any operation can answer with (Cloudflare's envelope, `success: false`).
#[derive(IntoResponses)]
pub(crate) enum Errors {
    /// A field is missing, of the wrong type or out of range; the message names it.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorEnvelope),
    /// No token, or not a valid one.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorEnvelope),
    /// The token is not allowed this (another account's, an account token on the admin API,
    /// outside the account's scope, a bucket not validated).
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorEnvelope),
    /// No such account, capture, ownership or route.
    #[response(status = 404)]
    NotFound(#[to_schema] ErrorEnvelope),
    /// The method is not allowed on this path.
    #[response(status = 405)]
    MethodNotAllowed(#[to_schema] ErrorEnvelope),
    /// A conflict with the current state (not stoppable, a name taken, one full capture at a time).
    #[response(status = 409)]
    Conflict(#[to_schema] ErrorEnvelope),
    /// The body is larger than 64 KiB.
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorEnvelope),
    /// Well formed but not possible (no agent in the colo, a limit of records).
    #[response(status = 422)]
    Unprocessable(#[to_schema] ErrorEnvelope),
    /// A rate or concurrency limit.
    #[response(status = 429)]
    TooMany(#[to_schema] ErrorEnvelope),
    /// The state store or a bucket is unreachable, or the request took longer than 30 s.
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorEnvelope),
}

/// No content.
#[derive(IntoResponses)]
#[response(status = 204)]
pub(crate) struct Deleted;

/// Bearer tokens, and the extension markers.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let mut extension = utoipa::openapi::extensions::Extensions::default();
        extension.insert("x-edgecap-extension".into(), serde_json::json!(true));
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path.starts_with("/edgecap/") || path.ends_with("/stream") {
                for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete].into_iter().flatten() {
                    op.extensions.get_or_insert_with(Default::default).merge(extension.clone());
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "edgecap",
        description = "Cloudflare-compatible packet captures across many PoPs (`/client/v4/accounts/{account_id}/pcaps`), and edgecap's extensions (`/edgecap/v1/...`, marked `x-edgecap-extension`). See docs/api.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::captures::list,
        super::captures::create,
        super::captures::get,
        super::captures::download,
        super::captures::stop,
        super::stream::stream,
        super::ownership::list,
        super::ownership::create,
        super::ownership::validate,
        super::ownership::delete,
        super::agents::list,
        super::accounts::own,
    ),
    modifiers(&Security),
    security(("bearer" = [])),
    tags((name = "pcaps", description = "Cloudflare's packet captures"), (name = "edgecap", description = "edgecap's extensions"))
)]
struct Document;

/// The document, as served.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    Document::openapi()
}

/// The document as JSON text, as `docs/openapi.json` holds it.
pub fn json() -> String {
    let mut value = serde_json::to_value(document()).unwrap_or_default();
    fix_links(&mut value);
    serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
}

/// utoipa 5 writes a link's operation as `operation_id`; OpenAPI (and every tool that
/// follows links) reads `operationId`.
fn fix_links(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(links) = map.get_mut("links").and_then(Value::as_object_mut) {
                for link in links.values_mut().filter_map(Value::as_object_mut) {
                    if let Some(id) = link.remove("operation_id") {
                        link.insert("operationId".into(), id);
                    }
                }
            }
            map.values_mut().for_each(fix_links);
        }
        Value::Array(items) => items.iter_mut().for_each(fix_links),
        _ => {}
    }
}
