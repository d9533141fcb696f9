//! What the coordinator stores about captures and bucket ownerships, and how it is shown on
//! the Cloudflare-compatible API.

use edgecap_capture::FilterV1;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureType {
    Simple,
    Full,
}

/// Cloudflare's status enum. Simple: `pending -> success | failed`. Full: `pending ->
/// running -> conversion_pending -> conversion_running -> success | failed`. `complete` and
/// `unknown` are never emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureStatus {
    Pending,
    Running,
    ConversionPending,
    ConversionRunning,
    Success,
    Failed,
}

impl CaptureStatus {
    pub fn is_final(self) -> bool {
        matches!(self, CaptureStatus::Success | CaptureStatus::Failed)
    }
}

/// Per-PoP outcome, returned as the extension field `pops`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopResult {
    pub pop: String,
    pub agent_id: String,
    /// `done` or `failed`.
    pub status: String,
    /// Packets this PoP contributed to the file.
    pub packets: u64,
    /// Packets that matched in this PoP before limits were applied.
    pub matched: u64,
    /// The lookback's sampling (1 in N) at this PoP.
    pub sample_rate: u32,
    /// Packets the PoP's kernel dropped before the lookback saw them (cumulative).
    pub kernel_dropped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    // Full captures (all default for sample captures).
    /// Packets the PoP's capture saw (before the filter's verdict is known to us: libpcap's count).
    #[serde(default)]
    pub received: u64,
    /// Packets dropped inside the agent (queue full).
    #[serde(default)]
    pub agent_dropped: u64,
    /// Bytes written into this PoP's shards.
    #[serde(default)]
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// The shards this PoP delivered to the bucket (provenance of the merged file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardRef>,
}

/// What one agent must do for a full capture (key `jobs/{agent}/{capture}`). Written by the
/// replica that accepted the capture; every replica watches these and forwards them to the
/// agents connected to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub capture_id: String,
    pub account_id: String,
    pub agent_id: String,
    pub pop: String,
    pub destination_conf: String,
    #[serde(default)]
    pub filter_v1: FilterV1,
    #[serde(default)]
    pub filter_bpf: Option<String>,
    #[serde(default)]
    pub filter_bpf_hash: Option<String>,
    pub time_limit: u64,
    #[serde(default)]
    pub packet_limit: Option<u64>,
    #[serde(default)]
    pub byte_limit: Option<u64>,
    /// A start that reaches the agent after this (Unix ns) is refused by it.
    pub not_after_ns: u64,
    #[serde(default)]
    pub stop: bool,
}

/// A shard delivered to the bucket by one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRef {
    /// Object key relative to the destination prefix.
    pub key: String,
    pub packets: u64,
    pub bytes: u64,
    pub file_bytes: u64,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filter: String,
}

impl PopResult {
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "done" | "failed" | "skipped")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptureRecord {
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
    /// Extension (full captures): `pcapng` for a pcapng merged file with provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
    /// Object-store key of the downloadable file (simple captures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,
}

impl CaptureRecord {
    /// The API representation: Cloudflare's fields for the type, plus extensions
    /// (`packet_limit`, `packets_captured`, `pops`) that the SDKs keep as extras.
    pub fn to_api(&self) -> Value {
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
                out.insert("destination_conf".into(), json!(self.destination_conf));
                out.insert("byte_limit".into(), json!(self.byte_limit));
                out.insert("stop_requested".into(), json!(self.stop_requested));
                out.insert("output_format".into(), json!(self.output_format.as_deref().unwrap_or("pcap")));
                if self.status == CaptureStatus::Success {
                    // Extension: where the merged file is, relative to destination_conf.
                    let ext = if self.output_format.as_deref() == Some("pcapng") { "pcapng" } else { "pcap" };
                    out.insert("object_key".into(), json!(format!("pcap_{}.{ext}", self.id)));
                }
            }
        }
        out.insert("packets_captured".into(), json!(self.packets_captured.unwrap_or(0)));
        if let Some(e) = &self.error_message {
            out.insert("error_message".into(), json!(e));
        }
        out.insert("pops".into(), json!(self.pops));
        Value::Object(out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnershipStatus {
    Pending,
    Success,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipRecord {
    pub id: String,
    pub account_id: String,
    pub destination_conf: String,
    pub filename: String,
    pub status: OwnershipStatus,
    pub submitted: String,
    #[serde(default)]
    pub validated: Option<String>,
    /// The secret written into the bucket; never returned by the API.
    #[serde(default)]
    pub challenge: String,
}

impl OwnershipRecord {
    pub fn to_api(&self) -> Value {
        json!({
            "id": self.id,
            "destination_conf": self.destination_conf,
            "filename": self.filename,
            "status": self.status,
            "submitted": self.submitted,
            "validated": self.validated,
        })
    }
}

/// A new 32-hex id (a UUID v4 without dashes), as Cloudflare's ids are.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether `text` has the shape of an id (so malformed ids are plain 404s).
pub fn is_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// RFC 3339 with microseconds and `Z`, as in Cloudflare's examples.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    t.format(&format).unwrap_or_else(|_| t.unix_timestamp().to_string())
}
