//! One PoP's part of a capture: its status, counters, stop reason and shards.

use serde::{Deserialize, Serialize};

/// Where one PoP is in a capture. Sample captures: `done` or `failed`. Full captures:
/// `pending` (job written) -> `running` -> `uploading` (capture ended, shards still spooled at
/// the agent) -> `done`, or `failed` with a reason; `skipped` for a PoP of the colo whose agent
/// was offline when the capture started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PopStatus {
    #[default]
    Pending,
    Running,
    Uploading,
    Done,
    Failed,
    Skipped,
}

impl PopStatus {
    pub(crate) fn is_final(self) -> bool {
        matches!(self, PopStatus::Done | PopStatus::Failed | PopStatus::Skipped)
    }
}

/// Why a PoP's capture ended (extension field `stop_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StopReason {
    TimeLimit,
    PacketLimit,
    ByteLimit,
    /// Stopped through the API.
    Stopped,
    /// The agent's spool was full (its bucket unreachable for long).
    SpoolFull,
    /// The agent restarted mid-capture.
    Interrupted,
    Failed,
    /// Its share of the capture's budget (shared by its PoPs) was spent.
    Budget,
    /// A reason this coordinator does not know (a newer agent's).
    #[serde(other)]
    Unknown,
}

/// Per-PoP outcome, returned as the extension field `pops`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PopResult {
    pub pop: String,
    pub agent_id: String,
    pub status: PopStatus,
    /// Packets this PoP contributed to the file.
    pub packets: u64,
    /// Packets that matched in this PoP before limits were applied.
    pub matched: u64,
    /// The lookback's sampling (1 in N) at this PoP.
    pub sample_rate: u32,
    /// Packets the PoP's kernel dropped before the lookback saw them (cumulative).
    pub kernel_dropped: u64,
    /// Packets the filter matched that the account's scope left out (not its traffic).
    #[serde(default)]
    pub excluded: u64,
    /// The PoP's clock against the coordinator's, as its agent measured it (coordinator
    /// minus agent, µs), and that measurement's uncertainty (µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_us: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_uncertainty_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When this PoP's capture began running (a full capture's; RFC 3339, on the PoP's clock:
    /// `clock_offset_us` says how far that is from the coordinator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
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
    /// Packets its agent could not copy to live viewers (`GET .../stream`); never missing
    /// from the delivered file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stream_dropped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
    /// The shards this PoP delivered to the bucket (provenance of the merged file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardRef>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PopResult {
    pub(crate) fn new(pop: &str, agent_id: &str, status: PopStatus) -> Self {
        Self { pop: pop.to_string(), agent_id: agent_id.to_string(), status, ..Default::default() }
    }

    pub(crate) fn is_final(&self) -> bool {
        self.status.is_final()
    }
}

/// A shard delivered to the bucket by one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShardRef {
    /// Object key relative to the destination prefix.
    pub key: String,
    pub packets: u64,
    pub bytes: u64,
    pub file_bytes: u64,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// CRC32C of the file (S3's base64 form), which the bucket verified on upload.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub crc32c: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filter: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons_keep_their_wire_names() {
        assert_eq!(serde_json::to_value(PopStatus::Uploading).unwrap(), "uploading");
        assert_eq!(serde_json::to_value(StopReason::SpoolFull).unwrap(), "spool_full");
        let newer: StopReason = serde_json::from_value("budget_spent_elsewhere".into()).unwrap();
        assert_eq!(newer, StopReason::Unknown);
        assert!(PopStatus::Skipped.is_final() && !PopStatus::Uploading.is_final());
    }
}
