//! The OpenAPI 3.1 document of the API, generated from the handlers' `#[utoipa::path]`
//! annotations and the schema types below (which describe the JSON the handlers write).
//! Served at `/client/v4/openapi.json`; `edgecap-coordinator --openapi` prints it, and
//! `docs/openapi.json` is that output (a test checks they agree). Operations outside
//! Cloudflare's API carry `x-edgecap-extension: true`, as do extension fields in their
//! descriptions.

#![allow(dead_code, reason = "schema types are read by the OpenAPI derive, not constructed")]

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// One error: a stable code and a message that names the field at fault.
#[derive(ToSchema)]
pub(crate) struct ApiErrorItem {
    /// edgecap's error code (docs/api.md).
    code: u32,
    /// Starts with the name of the field at fault, when there is one.
    message: String,
}

/// Every error answer: Cloudflare's envelope with `success: false`.
#[derive(ToSchema)]
pub(crate) struct ErrorEnvelope {
    success: bool,
    errors: Vec<ApiErrorItem>,
    messages: Vec<Value>,
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
}

/// `filter_v1`: every field optional; all given must match.
#[derive(ToSchema)]
pub(crate) struct FilterV1 {
    /// IPv4 or IPv6 address, or network (`addr/len`).
    source_address: Option<String>,
    /// IPv4 or IPv6 address, or network (`addr/len`).
    destination_address: Option<String>,
    #[schema(minimum = 0, maximum = 65535)]
    source_port: Option<u32>,
    #[schema(minimum = 0, maximum = 65535)]
    destination_port: Option<u32>,
    /// IP protocol number.
    #[schema(minimum = 0, maximum = 255)]
    protocol: Option<u32>,
}

/// `system`: always Magic Transit.
#[derive(ToSchema)]
pub(crate) enum SystemName {
    #[schema(rename = "magic-transit")]
    MagicTransit,
}

/// `type`: a sample of the lookbacks, or a full capture into a bucket.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum CaptureKind {
    Simple,
    Full,
}

/// `POST .../pcaps`: a sample (`type: simple`) or full capture. See docs/api.md for which
/// fields apply to which type.
#[derive(ToSchema)]
pub(crate) struct CaptureCreate {
    system: SystemName,
    r#type: CaptureKind,
    /// Seconds: the window looked back over (simple), the capture's duration (full).
    #[schema(minimum = 1, maximum = 300)]
    time_limit: u64,
    #[schema(minimum = 1, maximum = 10000)]
    packet_limit: Option<u64>,
    /// Full captures only.
    #[schema(minimum = 1, maximum = 1000000000)]
    byte_limit: Option<u64>,
    filter_v1: Option<FilterV1>,
    /// Extension: a pcap-filter expression (numbers, no host names), ANDed with `filter_v1`.
    filter_bpf: Option<String>,
    /// Simple captures: the end of the window (RFC 3339); default now.
    #[schema(format = DateTime)]
    offset_time: Option<String>,
    /// Full captures: a PoP name or a prefix of PoP names.
    colo_name: Option<String>,
    /// Extension, full captures: several colos in one capture (with or without `colo_name`).
    colo_names: Option<Vec<String>>,
    /// Extension: answer what would happen (PoPs, their matching traffic, when the limits
    /// would be reached) and start nothing.
    dry_run: Option<bool>,
    /// Full captures: `s3://bucket/prefix?region=...[&endpoint=...]`, owned (ownership).
    destination_conf: Option<String>,
    /// Extension, full captures: `pcap` (default) or `pcapng`.
    output_format: Option<String>,
}

/// One delivered shard of a full capture (extension).
#[derive(ToSchema)]
pub(crate) struct Shard {
    key: String,
    packets: u64,
    bytes: u64,
}

/// One PoP's part of a capture (extension).
#[derive(ToSchema)]
pub(crate) struct PopResult {
    pop: String,
    agent_id: String,
    /// `pending`, `running`, `uploading`, `done`, `failed`, `skipped`.
    status: String,
    packets: u64,
    matched: u64,
    sample_rate: u32,
    kernel_dropped: u64,
    /// Packets the filter matched outside the account's scope.
    excluded: Option<u64>,
    error: Option<String>,
    received: Option<u64>,
    agent_dropped: Option<u64>,
    bytes: Option<u64>,
    stop_reason: Option<String>,
    shards: Option<Vec<Shard>>,
}

/// A capture: Cloudflare's fields, and extensions (`packet_limit`, `packets_captured`,
/// `pops`, `effective_filter`, `object_key`, `output_format`, `filter_bpf`).
#[derive(ToSchema)]
pub(crate) struct Capture {
    id: String,
    r#type: String,
    system: String,
    /// `pending`, `running`, `conversion_pending`, `conversion_running`, `success`, `failed`.
    status: String,
    submitted: String,
    time_limit: u64,
    filter_v1: FilterV1,
    filter_bpf: Option<String>,
    packet_limit: Option<u64>,
    offset_time: Option<String>,
    colo_name: Option<String>,
    colo_names: Option<Vec<String>>,
    destination_conf: Option<String>,
    byte_limit: Option<u64>,
    stop_requested: Option<String>,
    output_format: Option<String>,
    object_key: Option<String>,
    packets_captured: u64,
    error_message: Option<String>,
    pops: Vec<PopResult>,
    /// What the agents applied: the filter ANDed with the account's scope (pcap-filter text).
    effective_filter: String,
}

/// One PoP's recent matching traffic, in a dry run.
#[derive(ToSchema)]
pub(crate) struct DryRunPop {
    pop: String,
    agent_id: String,
    matching_pps: f64,
    matching_bps: f64,
    error: Option<String>,
}

/// What a capture would do (extension: `dry_run`); nothing was started.
#[derive(ToSchema)]
pub(crate) struct DryRun {
    dry_run: bool,
    r#type: String,
    effective_filter: String,
    pops: Vec<DryRunPop>,
    #[schema(value_type = Vec<Object>)]
    offline: Vec<Value>,
    matching_pps: f64,
    matching_bps: f64,
    colo_names: Option<Vec<String>>,
    estimated_seconds_to_packet_limit: Option<f64>,
    estimated_seconds_to_byte_limit: Option<f64>,
    /// `time_limit`, `packet_limit` or `byte_limit`: what would end a full capture first.
    ends_by: Option<String>,
    estimated_seconds: Option<f64>,
    /// A sample: the packets it would hold.
    estimated_packets: Option<f64>,
}

/// The answer to `POST .../pcaps`: the capture, or with `dry_run` what it would do.
#[derive(ToSchema)]
#[serde(untagged)]
pub(crate) enum CreateAnswer {
    Capture(Box<CaptureEnvelope>),
    DryRun(Box<DryRunEnvelope>),
}

/// A bucket ownership challenge.
#[derive(ToSchema)]
pub(crate) struct Ownership {
    id: String,
    destination_conf: String,
    /// The challenge file written into the bucket.
    filename: String,
    /// `pending`, `success`, `failed`.
    status: String,
    submitted: String,
    validated: Option<String>,
}

/// `POST .../pcaps/ownership`.
#[derive(ToSchema)]
pub(crate) struct OwnershipCreate {
    destination_conf: String,
}

/// `POST .../pcaps/ownership/validate`.
#[derive(ToSchema)]
pub(crate) struct OwnershipValidate {
    destination_conf: String,
    /// The challenge file's text.
    ownership_challenge: String,
}

/// A connected agent (extension).
#[derive(ToSchema)]
pub(crate) struct Agent {
    agent_id: String,
    pop: String,
    interfaces: Vec<String>,
    version: String,
    coordinator: String,
    connected_at: String,
    sample_rate: Option<u32>,
    #[schema(value_type = Option<Object>)]
    lookback: Option<Value>,
    spool_damaged: Option<u64>,
}

/// An account's scope (extension; docs/tenancy.md).
#[derive(ToSchema)]
pub(crate) struct Scope {
    account_id: String,
    unrestricted: bool,
    prefixes: Vec<String>,
    pops: Vec<String>,
    updated: Option<String>,
    source: Option<String>,
    note: Option<String>,
}

/// `PUT /edgecap/v1/admin/accounts/{account}`.
#[derive(ToSchema)]
pub(crate) struct ScopeSet {
    prefixes: Option<Vec<String>>,
    pops: Option<Vec<String>>,
    unrestricted: Option<bool>,
}

/// Paging of a list (all items are on one page).
#[derive(ToSchema)]
pub(crate) struct ResultInfo {
    count: u64,
    page: u64,
    per_page: u64,
    total_count: u64,
}

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
            if path.starts_with("/edgecap/") {
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
