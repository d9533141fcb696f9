//! The schema types of the OpenAPI document: the JSON the handlers read and write.

#![allow(dead_code, reason = "schema types are read by the OpenAPI derive, not constructed")]

use serde_json::Value;
use utoipa::ToSchema;

use super::{CaptureEnvelope, DryRunEnvelope};

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
    /// Extension: shift each PoP's timestamps by its measured clock offset in the file.
    clock_correction: Option<bool>,
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
    /// The PoP's clock against the coordinator's (coordinator minus PoP), µs.
    clock_offset_us: Option<i64>,
    /// That measurement's uncertainty, µs.
    clock_uncertainty_us: Option<u64>,
    error: Option<String>,
    /// When this PoP's capture began running (full captures), RFC 3339 on the PoP's clock
    /// (`clock_offset_us` says how far that is from the coordinator's).
    started_at: Option<String>,
    received: Option<u64>,
    agent_dropped: Option<u64>,
    bytes: Option<u64>,
    /// Why this PoP's capture ended: `time_limit`, `packet_limit`, `byte_limit`, `budget` (its
    /// share of the limits shared by the capture's PoPs was spent), `stopped`, `spool_full`,
    /// `interrupted` or `failed`.
    stop_reason: Option<String>,
    /// Packets its agent could not copy to live viewers (`GET .../stream`); omitted when 0.
    stream_dropped: Option<u64>,
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
    clock_correction: Option<bool>,
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
    /// Its clock against its replica's (coordinator minus agent), µs.
    clock_offset_us: Option<i64>,
    clock_uncertainty_us: Option<u64>,
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
