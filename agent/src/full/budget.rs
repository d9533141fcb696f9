//! A full capture's share of a budget shared by its PoPs (`StartCapture.shared_budget`):
//! while a capture runs, when what it may still write falls under half a portion (its first
//! allowance), more is asked of the coordinator; the grant raises the allowance the capture
//! engine enforces (`edgecap_capture::session::Allowance`). A capture at its allowance waits
//! for the answer; one told the budget is exhausted ends at its allowance (stop reason
//! `budget`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecap_common::lock;
use edgecap_proto::agent::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Jobs;

/// How long an answer to a budget request is waited for before asking again.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// How often running captures are checked (so at most 20 requests a second per capture,
/// well within the coordinator's bound on an agent's messages).
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Whether a capture allowed `allowed` (`u64::MAX`: that limit does not apply), having
/// written `written`, should ask for more, its first allowance having been `first`: when
/// under half of that is left (or nothing, when it started with nothing).
fn low(allowed: u64, written: u64, first: u64) -> bool {
    allowed != u64::MAX && allowed.saturating_sub(written) <= first / 2
}

impl Jobs {
    /// Asks for more budget for the running captures that need it, while the control stream
    /// is up: one request at a time per capture, the captures' requests side by side (a slow
    /// answer for one holds up no other), each given [`ANSWER_WITHIN`]; a failed one is
    /// asked again.
    pub(crate) async fn budget_loop(self: Arc<Self>, out: mpsc::Sender<pb::AgentMessage>, cancel: CancellationToken) {
        let mut asking: JoinSet<()> = JoinSet::new();
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        while !cancel.is_cancelled() && !out.is_closed() {
            let mut budgeted = false;
            let wanting: Vec<_> = lock(&self.jobs)
                .iter()
                .filter_map(|(id, job)| {
                    // Running captures with an allowance first: the captures kept after their
                    // end (an hour) are passed over without hashing their ids, 20 times a second.
                    let (stop, (allowance, portion)) = (job.stop.as_ref()?, job.allowance.as_ref()?);
                    budgeted = true;
                    if lock(&in_flight).contains(id) {
                        return None;
                    }
                    let counters = stop.counters();
                    if allowance.is_exhausted() || counters.stop_reason.is_some() {
                        return None;
                    }
                    let (packets, bytes) = allowance.current();
                    let need =
                        low(packets, counters.written, portion.0) || low(bytes, counters.bytes_written, portion.1);
                    need.then(|| (id.clone(), allowance.clone(), counters.written, counters.bytes_written))
                })
                .collect();
            for (capture_id, allowance, packets_written, bytes_written) in wanting {
                lock(&in_flight).insert(capture_id.clone());
                let (this, out, in_flight) = (self.clone(), out.clone(), in_flight.clone());
                asking.spawn(async move {
                    let request_id = uuid::Uuid::new_v4().simple().to_string();
                    let request = pb::BudgetRequest {
                        request_id: request_id.clone(),
                        capture_id: capture_id.clone(),
                        packets_written,
                        bytes_written,
                    };
                    let asked = this.ask(&out, &request_id, pb::agent_message::Msg::BudgetRequest(request));
                    let answer = tokio::time::timeout(ANSWER_WITHIN, asked)
                        .await
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {} s", ANSWER_WITHIN.as_secs())));
                    match answer {
                        Ok(pb::coordinator_message::Msg::BudgetGrant(grant)) if grant.error.is_empty() => {
                            allowance.grant(grant.packet_allowance, grant.byte_allowance, grant.exhausted);
                            tracing::debug!(capture = %capture_id, packets = grant.packet_allowance,
                                bytes = grant.byte_allowance, exhausted = grant.exhausted, "budget granted");
                        }
                        Ok(pb::coordinator_message::Msg::BudgetGrant(grant)) => {
                            tracing::warn!(capture = %capture_id, error = %grant.error, "budget refused");
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(capture = %capture_id, error = format!("{error:#}"), "budget not granted")
                        }
                    }
                    lock(&in_flight).remove(&capture_id);
                });
            }
            // No capture with a share running: asleep until one starts (a start while the
            // captures were being looked at left its wake-up waiting).
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = out.closed() => break,
                Some(_) = asking.join_next(), if !asking.is_empty() => {}
                _ = tokio::time::sleep(CHECK_EVERY), if budgeted => {}
                () = self.budgeted.notified(), if !budgeted => {}
            }
        }
        asking.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn more_is_asked_for_under_half_a_portion() {
        assert!(!super::low(160, 100, 100) && super::low(150, 100, 100) && super::low(100, 100, 100));
        assert!(super::low(0, 0, 0), "started with nothing: asks at once");
        assert!(!super::low(u64::MAX, 1 << 40, 100), "that limit does not apply");
    }
}
