//! A validated create request (what `api/validate.rs` makes of a body) and the record it
//! becomes.

use edgecap_capture::FilterV1;
use edgecap_capture::bpf::CheckedFilter;
use time::OffsetDateTime;

use super::{CaptureRecord, CaptureStatus, CaptureType, DestinationConf, OutputFormat, new_id, rfc3339};

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CaptureRequest {
    pub capture_type: CaptureType,
    pub time_limit: u64,
    pub packet_limit: Option<u64>,
    pub byte_limit: Option<u64>,
    pub filter: FilterV1,
    /// Extension: pcap-filter text, compiled and bounded, ANDed with `filter`.
    pub filter_bpf: Option<CheckedFilter>,
    /// Simple captures: the end of the window (defaults to the time of the request).
    pub offset_time: Option<OffsetDateTime>,
    pub colo_name: Option<String>,
    /// Every colo of a full capture: `colo_name` and the `colo_names` extension, deduplicated.
    pub colo_names: Vec<String>,
    pub destination: Option<DestinationConf>,
    pub output_format: OutputFormat,
    /// Extension: answer what would happen, start nothing.
    pub dry_run: bool,
    /// Extension: shift each PoP's timestamps by its measured clock offset when merging.
    pub clock_correction: bool,
}

impl CaptureRequest {
    /// A request of `capture_type` for 10 s with nothing else set (tests and benchmarks).
    pub(crate) fn for_test(capture_type: CaptureType) -> Self {
        Self {
            capture_type,
            time_limit: 10,
            packet_limit: None,
            byte_limit: None,
            filter: FilterV1::default(),
            filter_bpf: None,
            offset_time: None,
            colo_name: None,
            colo_names: Vec::new(),
            destination: None,
            output_format: OutputFormat::Pcap,
            dry_run: false,
            clock_correction: false,
        }
    }
}

impl CaptureRecord {
    /// A new record for a validated request, status `pending`, no PoPs yet.
    pub(crate) fn from_request(account: &str, request: CaptureRequest, now: OffsetDateTime) -> Self {
        CaptureRecord {
            id: new_id(),
            account_id: account.to_string(),
            capture_type: request.capture_type,
            system: "magic-transit".into(),
            status: CaptureStatus::Pending,
            submitted: rfc3339(now),
            time_limit: request.time_limit,
            packet_limit: request.packet_limit,
            byte_limit: request.byte_limit,
            filter_v1: request.filter,
            filter_bpf: request.filter_bpf.as_ref().map(|f| f.text.clone()),
            filter_bpf_hash: request.filter_bpf.map(|f| f.hash),
            offset_time: request.offset_time.map(rfc3339),
            colo_name: request.colo_name,
            colo_names: if request.colo_names.len() > 1 { request.colo_names } else { Vec::new() },
            clock_correction: request.clock_correction,
            shared_budget: request.capture_type == CaptureType::Full,
            destination_conf: request.destination.map(|d| d.uri),
            output_format: request.output_format,
            packets_captured: None,
            stop_requested: None,
            error_message: None,
            pops: vec![],
            object_key: None,
            scope: None,
            traceparent: edgecap_telemetry::traceparent(),
        }
    }
}
