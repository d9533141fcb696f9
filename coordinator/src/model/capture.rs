//! Capture records and how they are shown on the Cloudflare-compatible API.

use edgecap_capture::FilterV1;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// view (see [`CaptureRecord::merged_pops`]): a pending capture with a PoP past `pending`
    /// (not merely skipped, its agent offline) is running.
    pub(crate) fn view_pops(&mut self, keyed: Vec<PopResult>) {
        let merged = self.merged_pops(keyed);
        self.view_merged(merged);
    }

    /// Takes `merged` (from [`CaptureRecord::merged_pops`]) as this record's PoPs, as
    /// [`CaptureRecord::view_pops`] does.
    pub(crate) fn view_merged(&mut self, merged: Vec<PopResult>) {
        use super::pop::PopStatus;
        self.pops = merged;
        if self.status == CaptureStatus::Pending
            && self.pops.iter().any(|p| !matches!(p.status, PopStatus::Pending | PopStatus::Skipped))
        {
            self.status = CaptureStatus::Running;
        }
    }

    /// This record's PoPs with the states of their own keys (`keyed`) put in: a PoP has a key
    /// once its agent first reported (or the leader failed it); until then the record's copy
    /// stands for it (pending, or skipped when its agent was offline). Sorted by PoP and agent.
    pub(crate) fn merged_pops(&self, keyed: Vec<PopResult>) -> Vec<PopResult> {
        let mut keyed: std::collections::HashMap<String, PopResult> =
            keyed.into_iter().map(|p| (p.agent_id.clone(), p)).collect();
        let mut pops: Vec<PopResult> =
            self.pops.iter().map(|p| keyed.remove(&p.agent_id).unwrap_or_else(|| p.clone())).collect();
        pops.extend(keyed.into_values());
        pops.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
        pops
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
        // (Cannot fail: every key is a string.)
        serde_json::to_value(self.api_view()).unwrap_or_default()
    }

    /// [`CaptureRecord::to_api`] as it serializes, without building a `Value`.
    pub(crate) fn api_view(&self) -> ApiView<'_> {
        let full = self.capture_type == CaptureType::Full;
        ApiView {
            byte_limit: full.then_some(&self.byte_limit),
            clock_correction: self.clock_correction.then_some(true),
            colo_name: full.then_some(&self.colo_name),
            colo_names: (full && !self.colo_names.is_empty()).then_some(&self.colo_names),
            destination_conf: full.then_some(&self.destination_conf),
            // Extension: what the agents applied, the account's scope included.
            effective_filter: self.effective_filter(),
            error_message: self.error_message.as_ref(),
            filter_bpf: self.filter_bpf.as_ref(),
            filter_v1: &self.filter_v1,
            id: &self.id,
            // Extension: where the merged file is, relative to destination_conf.
            object_key: (full && self.status == super::CaptureStatus::Success).then(|| self.merged_key()),
            offset_time: (!full).then_some(&self.offset_time),
            output_format: full.then_some(self.output_format),
            packet_limit: self.packet_limit,
            packets_captured: self.packets_captured.unwrap_or(0),
            pops: &self.pops,
            status: self.status,
            stop_requested: full.then_some(&self.stop_requested),
            submitted: &self.submitted,
            system: &self.system,
            time_limit: self.time_limit,
            capture_type: self.capture_type,
        }
    }
}

/// The API representation of a capture: Cloudflare's fields for its type, plus extensions
/// (`packet_limit`, `packets_captured`, `pops`, ...) that the SDKs keep as extras. Fields in
/// key order, as `Value`'s objects have them; a field of the other type is left out, one of its
/// own type without a value is `null`.
#[derive(Serialize)]
pub(crate) struct ApiView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    byte_limit: Option<&'a Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_correction: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    colo_name: Option<&'a Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    colo_names: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_conf: Option<&'a Option<String>>,
    effective_filter: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter_bpf: Option<&'a String>,
    filter_v1: &'a FilterV1,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset_time: Option<&'a Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_format: Option<OutputFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    packet_limit: Option<u64>,
    packets_captured: u64,
    pops: &'a [PopResult],
    status: CaptureStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_requested: Option<&'a Option<String>>,
    submitted: &'a str,
    system: &'a str,
    time_limit: u64,
    #[serde(rename = "type")]
    capture_type: CaptureType,
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::model::pop::PopStatus;

    /// The view as it was built field by field into a `Value` before [`ApiView`]: the
    /// reference the view must keep answering.
    fn field_by_field(r: &CaptureRecord) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), json!(r.id));
        out.insert("type".into(), json!(r.capture_type));
        out.insert("system".into(), json!(r.system));
        out.insert("status".into(), json!(r.status));
        out.insert("submitted".into(), json!(r.submitted));
        out.insert("time_limit".into(), json!(r.time_limit));
        out.insert("filter_v1".into(), json!(r.filter_v1));
        if let Some(f) = &r.filter_bpf {
            out.insert("filter_bpf".into(), json!(f));
        }
        if let Some(v) = r.packet_limit {
            out.insert("packet_limit".into(), json!(v));
        }
        match r.capture_type {
            CaptureType::Simple => {
                out.insert("offset_time".into(), json!(r.offset_time));
            }
            CaptureType::Full => {
                out.insert("colo_name".into(), json!(r.colo_name));
                if !r.colo_names.is_empty() {
                    out.insert("colo_names".into(), json!(r.colo_names));
                }
                out.insert("destination_conf".into(), json!(r.destination_conf));
                out.insert("byte_limit".into(), json!(r.byte_limit));
                out.insert("stop_requested".into(), json!(r.stop_requested));
                out.insert("output_format".into(), json!(r.output_format));
                if r.status == CaptureStatus::Success {
                    out.insert("object_key".into(), json!(r.merged_key()));
                }
            }
        }
        out.insert("packets_captured".into(), json!(r.packets_captured.unwrap_or(0)));
        if let Some(e) = &r.error_message {
            out.insert("error_message".into(), json!(e));
        }
        out.insert("pops".into(), json!(r.pops));
        if r.clock_correction {
            out.insert("clock_correction".into(), json!(true));
        }
        out.insert("effective_filter".into(), json!(r.effective_filter()));
        Value::Object(out)
    }

    fn record(capture_type: &str) -> CaptureRecord {
        serde_json::from_value(json!({
            "id": "0123456789abcdef0123456789abcdef", "account_id": "acct", "type": capture_type,
            "system": "magic-transit", "status": "pending", "submitted": "2026-12-01T11:00:00Z",
            "time_limit": 60,
        }))
        .unwrap()
    }

    #[test]
    fn the_api_view_answers_what_the_record_holds_field_for_field() {
        let mut records = vec![record("simple"), record("full")];
        let mut simple = record("simple");
        simple.offset_time = Some("2026-12-01T10:59:00Z".into());
        simple.packet_limit = Some(100);
        simple.filter_bpf = Some("udp".into());
        simple.status = CaptureStatus::Success;
        simple.packets_captured = Some(42);
        records.push(simple);
        let mut full = record("full");
        full.colo_name = Some("ams".into());
        full.colo_names = vec!["ams".into(), "fra".into()];
        full.destination_conf = Some("s3://bucket/prefix".into());
        full.byte_limit = Some(1 << 20);
        full.stop_requested = Some("2026-12-01T11:00:05Z".into());
        full.output_format = OutputFormat::Pcapng;
        full.status = CaptureStatus::Success;
        full.clock_correction = true;
        full.error_message = Some("one PoP failed".into());
        full.pops = (0..3)
            .map(|i| PopResult {
                pop: format!("pop{i}"),
                agent_id: format!("a{i}"),
                status: PopStatus::Done,
                packets: i,
                error: (i == 2).then(|| "gone".into()),
                ..Default::default()
            })
            .collect();
        records.push(full.clone());
        full.status = CaptureStatus::Failed;
        full.colo_names.clear();
        records.push(full);
        for r in &records {
            let reference = field_by_field(r);
            assert_eq!(r.to_api(), reference);
            // Serialized straight, the same JSON (a PoP's keys in its struct's order).
            let text = serde_json::to_string(&r.api_view()).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), reference);
        }
    }
}
