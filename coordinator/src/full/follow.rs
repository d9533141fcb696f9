//! The leader's follow-up of full captures: a runner per unfinished capture fails PoPs whose
//! agent is gone for longer than the reconnect grace or that miss their deadline, rolls the
//! PoPs' states up into the capture's status, and hands the capture to [`super::merge`] once
//! every PoP is final.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use edgecap_common::tasks::Tasks;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{FullCaptures, START_DEADLINE};
use crate::model::{CaptureRecord, CaptureStatus, CaptureType, PopResult, PopStatus};

impl FullCaptures {
    /// The leader's loop: a runner per unfinished full capture, spawned on `work`.
    pub(super) async fn follow_captures(self: Arc<Self>, work: Tasks) {
        let cancel = work.token();
        let mut runners: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        while !cancel.is_cancelled() {
            match self.repo.list_all_captures().await {
                Ok(records) => {
                    runners.retain(|_, h| !h.is_finished());
                    for record in records {
                        let done = record.capture_type != CaptureType::Full || record.status.is_final();
                        if done || runners.contains_key(&record.id) {
                            continue;
                        }
                        let id = record.id.clone();
                        runners.insert(id, work.spawn(self.clone().run(record, cancel.clone())));
                    }
                }
                Err(error) => tracing::warn!(%error, "could not list captures"),
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        // The runners see the same token; the owner of `work` waits for them.
    }

    /// Writes the capture's status fields (not the parts the API owns, like stop_requested).
    pub(super) async fn persist(&self, record: &CaptureRecord) -> bool {
        let result = self
            .repo
            .update_capture(&record.account_id, &record.id, |r| {
                r.status = record.status;
                r.error_message = record.error_message.clone();
                r.packets_captured = record.packets_captured;
                r.pops = record.pops.clone();
            })
            .await;
        match result {
            Ok(_) => true,
            Err(error) => {
                // Kept in memory and written at the next attempt: results are not lost to an outage.
                tracing::warn!(capture = %record.id, %error, "capture status not written; will retry");
                false
            }
        }
    }

    /// Follows one capture to its end (leader only; cancelled when leadership is lost).
    #[tracing::instrument(name = "full_capture", skip_all, fields(capture = %record.id, leader = %self.name))]
    async fn run(self: Arc<Self>, mut record: CaptureRecord, cancel: CancellationToken) {
        let id = record.id.clone();
        let started = Instant::now();
        // Deadlines count from when this leader took the capture over: a new leader gives
        // PoPs the full allowance again rather than failing them for its predecessor's time.
        let deadline = started + Duration::from_secs(record.time_limit) + START_DEADLINE + self.settings.upload_grace;
        let mut gone_since: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tracing::info!(capture = %id, pops = record.pops.len(), "following full capture");
        while matches!(record.status, CaptureStatus::Pending | CaptureStatus::Running) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (pops, present) = match (self.repo.list_pops(&id).await, self.repo.list_agents().await) {
                (Ok(p), Ok(a)) => (p, a.into_iter().map(|a| a.agent_id).collect::<HashSet<_>>()),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(capture = %id, error = %e, "state unreadable; capture goes on");
                    continue;
                }
            };
            let now = Instant::now();
            for pop in pops.iter().filter(|p| !p.is_final()) {
                let reason = if !present.contains(&pop.agent_id) {
                    let since = *gone_since.entry(pop.agent_id.clone()).or_insert(now);
                    (now - since > self.settings.reconnect_grace).then(|| {
                        format!(
                            "agent disconnected during the capture and did not come back within {} s; the shards it delivered before are kept",
                            self.settings.reconnect_grace.as_secs()
                        )
                    })
                } else {
                    gone_since.remove(&pop.agent_id);
                    (now > deadline).then(|| {
                        format!(
                            "did not finish within time_limit + {} s",
                            (START_DEADLINE + self.settings.upload_grace).as_secs()
                        )
                    })
                };
                if let Some(reason) = reason {
                    self.fail_pop(&id, &pop.agent_id, reason).await;
                }
            }
            if pops.is_empty() && now - started > START_DEADLINE {
                // The accepting replica died between the record and its jobs.
                for pop in &mut record.pops {
                    pop.status = PopStatus::Failed;
                    pop.error = Some(
                        "the capture's jobs were never written (its coordinator failed while accepting it)".into(),
                    );
                }
            }
            let mut view = pops;
            view.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
            let before = (record.status, record.pops.clone());
            if !view.is_empty() {
                record.pops = view;
            }
            if record.status == CaptureStatus::Pending && record.pops.iter().any(|p| p.status != PopStatus::Pending) {
                record.status = CaptureStatus::Running;
            }
            if !record.pops.is_empty() && record.pops.iter().all(PopResult::is_final) {
                record.status = CaptureStatus::ConversionPending;
            }
            if (record.status, record.pops.clone()) != before {
                self.persist(&record).await;
            }
        }
        if cancel.is_cancelled() {
            return;
        }
        self.convert(record, cancel).await;
    }

    /// Fails a PoP that is still open (compare-and-swap: an agent's final report that won
    /// the race is kept).
    async fn fail_pop(&self, capture: &str, agent: &str, reason: String) {
        let failed = self
            .repo
            .update_pop(capture, agent, |pop| {
                if !pop.is_final() {
                    pop.status = PopStatus::Failed;
                    pop.error = Some(reason.clone());
                }
            })
            .await;
        if let Ok(Some(_)) = failed {
            tracing::warn!(%capture, %agent, %reason, "PoP failed");
        }
    }
}

/// "PoPs failed: ord01 (agent a1): reason; ... PoPs skipped (offline): ord04 (agent a4)"
pub(super) fn failure_summary(pops: &[PopResult]) -> Option<String> {
    let failed: Vec<String> = pops
        .iter()
        .filter(|p| p.status == PopStatus::Failed)
        .map(|p| format!("{} (agent {}): {}", p.pop, p.agent_id, p.error.as_deref().unwrap_or("no reason given")))
        .collect();
    let skipped: Vec<String> = pops
        .iter()
        .filter(|p| p.status == PopStatus::Skipped)
        .map(|p| format!("{} (agent {})", p.pop, p.agent_id))
        .collect();
    let mut parts = Vec::new();
    if !failed.is_empty() {
        parts.push(format!("PoPs failed: {}", failed.join("; ")));
    }
    if !skipped.is_empty() {
        parts.push(format!("PoPs skipped (offline): {}", skipped.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join(". "))
}
