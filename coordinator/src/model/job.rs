//! What one agent must do for a full capture.

use edgecap_capture::FilterV1;
use serde::{Deserialize, Serialize};

/// One agent's part of a full capture (key `jobs/{agent}/{capture}`). Written by the replica
/// that accepted the capture; every replica watches these and forwards them to the agents
/// connected to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobRecord {
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
    /// The account's scope, which the agent applies itself (`None`: a job from before scopes
    /// existed, sent as unrestricted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<super::CaptureScope>,
    /// With a budget shared by the capture's PoPs (see `full/budget.rs`): this PoP's first
    /// allowance, (packets, bytes), `u64::MAX` for a limit that does not apply. The limits
    /// above stay the capture's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_allowance: Option<(u64, u64)>,
    /// The capture's trace context (see `CaptureRecord::traceparent`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
}
