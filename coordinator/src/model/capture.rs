//! Capture records and how they are shown on the Cloudflare-compatible API.

use edgecap_capture::FilterV1;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::pop::PopResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CaptureType {
    Simple,
    Full,
}

/// Cloudflare's status enum. Simple: `pending -> success | failed`. Full: `pending ->
/// running -> conversion_pending -> conversion_running -> success | failed`. `complete` and
/// `unknown` are never emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CaptureStatus {
    Pending,
    Running,
    ConversionPending,
    ConversionRunning,
    Success,
    Failed,
}

impl CaptureStatus {
    pub(crate) fn is_final(self) -> bool {
        matches!(self, CaptureStatus::Success | CaptureStatus::Failed)
    }
}

/// The merged file's format (extension `output_format`, full captures): classic pcap, or
/// pcapng with one interface per PoP/agent/interface and per-PoP drop counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OutputFormat {
    #[default]
    Pcap,
    Pcapng,
}

impl OutputFormat {
    /// The file extension, which is also the API's name for the format.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            OutputFormat::Pcap => "pcap",
            OutputFormat::Pcapng => "pcapng",
        }
    }

    fn is_default(&self) -> bool {
        *self == OutputFormat::Pcap
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CaptureRecord {
    pub id: String,
    pub account_id: String,
    #[serde(rename = "type")]
    pub capture_type: CaptureType,
    pub system: String,
    pub status: CaptureStatus,
    /// RFC 3339.
    pub submitted: String,
    pub time_limit: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_limit: Option<u64>,
    #[serde(default)]
    pub filter_v1: FilterV1,
    /// Extension: pcap-filter text ANDed with `filter_v1`, and its bytecode hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_bpf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_bpf_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colo_name: Option<String>,
    /// The limits are a budget shared by the PoPs (every full capture since shared budgets
    /// exist; older ones applied them per PoP).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_budget: bool,
    /// Extension: PoPs' timestamps were shifted by their measured clock offsets in the file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_correction: bool,
    /// Extension: the colos of a capture over several (`colo_name` is the first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub colo_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_conf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_captured: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_requested: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default)]
    pub pops: Vec<PopResult>,
    #[serde(default, skip_serializing_if = "OutputFormat::is_default")]
    pub output_format: OutputFormat,
    /// Object-store key of the downloadable file (simple captures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,
    /// The account's scope when the capture was created (`None`: a record from before
    /// scopes existed, which captured unrestricted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<super::CaptureScope>,
    /// W3C trace context of the request that created it: the capture's work on every replica
    /// and agent joins that trace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
}

impl CaptureRecord {
    /// Takes the PoPs' own states (their keys, as agents' reports wrote them) as this record's
    /// view, sorted by PoP and agent: a pending capture with a PoP past `pending` is running.
    /// Nothing changes when there are none (the jobs are not written yet).
    pub(crate) fn view_pops(&mut self, mut pops: Vec<PopResult>) {
        if pops.is_empty() {
            return;
        }
        pops.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
        self.pops = pops;
        if self.status == CaptureStatus::Pending && self.pops.iter().any(|p| p.status != super::pop::PopStatus::Pending)
        {
            self.status = CaptureStatus::Running;
        }
    }

    /// Lists each PoP's delivered shards (as `(agent_id, shard)` pairs from the store) on its
    /// result; the stored record does not keep them.
    pub(crate) fn attach_shards(&mut self, shards: &[(String, super::ShardRef)]) {
        for pop in &mut self.pops {
            pop.shards = shards.iter().filter(|(a, _)| *a == pop.agent_id).map(|(_, s)| s.clone()).collect();
        }
    }
}

impl CaptureRecord {
    /// The merged file's key (relative to the destination prefix), as Cloudflare names it
    /// (`.pcapng` when that format was asked for). The one place that name is made.
    pub(crate) fn merged_key(&self) -> String {
        format!("pcap_{}.{}", self.id, self.output_format.extension())
    }

    /// The scope its agents apply (unrestricted for records from before scopes existed).
    pub(crate) fn capture_scope(&self) -> super::CaptureScope {
        self.scope.clone().unwrap_or_else(super::CaptureScope::everything)
    }

    /// The filter as the agents apply it: `filter_v1`, `filter_bpf` and the account's scope,
    /// ANDed (pcap-filter text; empty: everything).
    pub(crate) fn effective_filter(&self) -> String {
        use edgecap_capture::filter::combine;
        let user = combine(&self.filter_v1.to_bpf(), self.filter_bpf.as_deref().unwrap_or_default());
        combine(&user, &self.capture_scope().to_bpf())
    }

    /// The API representation: Cloudflare's fields for the type, plus extensions
    /// (`packet_limit`, `packets_captured`, `pops`) that the SDKs keep as extras.
    pub(crate) fn to_api(&self) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        out.insert("type".into(), json!(self.capture_type));
        out.insert("system".into(), json!(self.system));
        out.insert("status".into(), json!(self.status));
        out.insert("submitted".into(), json!(self.submitted));
        out.insert("time_limit".into(), json!(self.time_limit));
        out.insert("filter_v1".into(), json!(self.filter_v1));
        if let Some(f) = &self.filter_bpf {
            out.insert("filter_bpf".into(), json!(f));
        }
        if let Some(v) = self.packet_limit {
            out.insert("packet_limit".into(), json!(v));
        }
        match self.capture_type {
            CaptureType::Simple => {
                out.insert("offset_time".into(), json!(self.offset_time));
            }
            CaptureType::Full => {
                out.insert("colo_name".into(), json!(self.colo_name));
                if !self.colo_names.is_empty() {
                    out.insert("colo_names".into(), json!(self.colo_names));
                }
                out.insert("destination_conf".into(), json!(self.destination_conf));
                out.insert("byte_limit".into(), json!(self.byte_limit));
                out.insert("stop_requested".into(), json!(self.stop_requested));
                out.insert("output_format".into(), json!(self.output_format));
                if self.status == super::CaptureStatus::Success {
                    // Extension: where the merged file is, relative to destination_conf.
                    out.insert("object_key".into(), json!(self.merged_key()));
                }
            }
        }
        out.insert("packets_captured".into(), json!(self.packets_captured.unwrap_or(0)));
        if let Some(e) = &self.error_message {
            out.insert("error_message".into(), json!(e));
        }
        out.insert("pops".into(), json!(self.pops));
        if self.clock_correction {
            out.insert("clock_correction".into(), json!(true));
        }
        // Extension: what the agents applied, the account's scope included.
        out.insert("effective_filter".into(), json!(self.effective_filter()));
        Value::Object(out)
    }
}
