//! Dry runs: what a capture would see, without starting it. Every agent the capture would
//! ask is sent a sample query over the last ten seconds of its lookback (the capture's filter
//! and the account's scope, at most a few packets back), and its answer gives the recent
//! rate of matching traffic there.

use std::time::Duration;

use edgecap_proto::agent::v1 as pb;
use serde_json::{Value, json};

use super::SampleCaptures;
use super::fanout::targets;
use crate::model::CaptureScope;

/// The window looked at, and how far before now it ends (so agents need not wait for their
/// capture threads to catch up).
const WINDOW: Duration = Duration::from_secs(10);
const SETTLED: Duration = Duration::from_secs(1);
/// Packets fetched per agent to estimate the bytes per matching packet.
const SAMPLE_PACKETS: u32 = 200;

/// One agent's recent matching traffic.
pub(crate) struct Rate {
    pub agent_id: String,
    pub pop: String,
    /// Matching packets per second on the wire (the lookback's count times its sampling).
    pub pps: f64,
    /// Matching bytes per second on the wire.
    pub bps: f64,
    /// Why it could not tell.
    pub error: Option<String>,
}

impl Rate {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "pop": self.pop, "agent_id": self.agent_id,
            "matching_pps": (self.pps * 10.0).round() / 10.0, "matching_bps": self.bps.round(),
            "error": self.error,
        })
    }
}

impl SampleCaptures {
    /// Asks the connected agents `wanted` selects (by agent id and PoP) for their recent
    /// matching traffic.
    pub(crate) async fn probe(
        &self,
        filter: &pb::FilterV1,
        filter_bpf: (&str, &str),
        scope: &CaptureScope,
        wanted: impl Fn(&str, &str) -> bool,
    ) -> Vec<Rate> {
        let to_ns = edgecap_common::now_ns().saturating_sub(SETTLED.as_nanos() as u64);
        let query = pb::SampleQuery {
            request_id: String::new(),
            from_ns: to_ns.saturating_sub(WINDOW.as_nanos() as u64),
            to_ns,
            filter: Some(filter.clone()),
            packet_limit: SAMPLE_PACKETS,
            filter_bpf: filter_bpf.0.to_string(),
            filter_bpf_hash: filter_bpf.1.to_string(),
            scope: Some(crate::convert::scope_to_pb(scope)),
            traceparent: edgecap_telemetry::traceparent(),
        };
        let agents: Vec<_> = targets(self).await.into_iter().filter(|t| wanted(&t.agent_id, &t.pop)).collect();
        let asked = super::fanout::ask(self, &agents, &query).await;
        agents
            .into_iter()
            .zip(asked)
            .map(|(a, answer)| {
                let seconds = WINDOW.as_secs_f64();
                let sampling = f64::from(a.sample_rate.max(1));
                match answer {
                    Ok(answer) => {
                        let pps = answer.matched as f64 * sampling / seconds;
                        let average = if answer.packets.is_empty() {
                            0.0
                        } else {
                            answer.packets.iter().map(|p| f64::from(p.orig_len)).sum::<f64>()
                                / answer.packets.len() as f64
                        };
                        Rate { agent_id: a.agent_id, pop: a.pop, pps, bps: pps * average, error: None }
                    }
                    Err(error) => Rate { agent_id: a.agent_id, pop: a.pop, pps: 0.0, bps: 0.0, error: Some(error) },
                }
            })
            .collect()
    }
}
