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
use edgecap_state::StateError;

use crate::model::{CaptureRecord, CaptureStatus, CaptureType, PopResult, PopStatus};
use crate::store::RepoError;

/// How long an active-index entry may point at a record that does not exist.
const ORPHAN_GRACE: Duration = Duration::from_secs(60);
/// How often a runner reads its capture's PoPs and the agents present, at the least.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// When a runner first reads them (and opens its watch on the PoPs): not at once, when the
/// PoPs are starting, but soon enough for a capture stopped right after its start.
const FIRST_READ: Duration = Duration::from_millis(250);
/// How often the leader reads the index of unfinished captures, at the least.
const INDEX_EVERY: Duration = Duration::from_millis(500);
/// After a PoP's final state is written, how long a runner waits for others ending at the
/// same moment before it reads them all in one pass (and the leader after a capture is added
/// to the index, for others added with it).
const GATHER: Duration = Duration::from_millis(20);
/// When PoPs that never reported are checked for a job: past the agents' start deadline
/// (counted from the jobs' writing, a moment after this runner may start), with a margin for
/// a job written late and for agents' clocks, so that no start can still be taken.
const JOBS_CHECKED_AFTER: Duration = Duration::from_secs(START_DEADLINE.as_secs() + 10);

impl FullCaptures {
    /// The leader's loop: a runner per unfinished full capture (from the active index: the
    /// work per round does not grow with the captures stored), spawned on `work`.
    pub(super) async fn follow_captures(self: Arc<Self>, work: Tasks) {
        let cancel = work.token();
        let mut runners: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        // Index entries whose record is missing: written just before their record, or left
        // by a replica that failed in between; dropped after a grace period.
        let mut orphans: HashMap<String, Instant> = HashMap::new();
        self.build_active_index().await;
        // A capture added to the index is followed at once, not at the next read.
        let mut added = super::wakes::Wakes::new_captures(&self.repo).await;
        while !cancel.is_cancelled() {
            match self.repo.list_active().await {
                Ok(active) => {
                    runners.retain(|_, h| !h.is_finished());
                    self.metrics.set_running(CaptureType::Full, runners.len());
                    for (id, account) in active {
                        if runners.contains_key(&id) {
                            continue;
                        }
                        match self.repo.get_capture(&account, &id).await {
                            Ok(Some(record))
                                if record.capture_type == CaptureType::Full && !record.status.is_final() =>
                            {
                                orphans.remove(&id);
                                runners.insert(id, work.spawn(self.clone().run(record, cancel.clone())));
                            }
                            Ok(Some(_)) => {
                                let _ = self.repo.delete_active(&id).await;
                            }
                            Ok(None) => {
                                let since = *orphans.entry(id.clone()).or_insert_with(Instant::now);
                                if since.elapsed() > ORPHAN_GRACE {
                                    tracing::warn!(capture = %id, "active index entry without a record removed");
                                    let _ = self.repo.delete_active(&id).await;
                                    orphans.remove(&id);
                                }
                            }
                            Err(error) => tracing::warn!(capture = %id, %error, "capture unreadable"),
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "could not list active captures"),
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(INDEX_EVERY) => {}
                () = added.next() => {
                    if !added.gather(GATHER, &cancel).await {
                        break;
                    }
                }
            }
        }
        // The runners see the same token; the owner of `work` waits for them.
        self.metrics.set_running(CaptureType::Full, 0);
    }

    /// Stores written before the active index existed: index their unfinished full captures
    /// once (the only full read of the records the leader makes).
    async fn build_active_index(&self) {
        if self.repo.active_index_built().await.unwrap_or(true) {
            return;
        }
        let Ok(records) = self.repo.list_all_captures().await else { return };
        for record in records.iter().filter(|r| r.capture_type == CaptureType::Full && !r.status.is_final()) {
            if self.repo.put_active(&record.account_id, &record.id).await.is_err() {
                return;
            }
        }
        for record in &records {
            let day = crate::store::day_of(&record.submitted);
            if self.repo.put_created(&day, &record.account_id, &record.id).await.is_err() {
                return;
            }
        }
        let _ = self.repo.mark_active_index_built().await;
        tracing::info!(captures = records.len(), "capture indexes built from the records");
    }

    /// Writes the capture's status fields (not the parts the API owns, like stop_requested);
    /// `false` when it must be tried again (the store is unreachable). A record the store will
    /// never take (larger than its limit) is written without its per-PoP details, saying so;
    /// unless it was already a success (the merged file is in the bucket), that ends the
    /// capture as `failed`.
    pub(super) async fn persist(&self, record: &mut CaptureRecord) -> bool {
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
            Err(RepoError::State(StateError::TooLarge { bytes, .. })) => {
                let note = format!(
                    "the capture's record with its per-PoP details ({bytes} bytes) is larger than the state store takes; the details are not kept"
                );
                tracing::error!(capture = %record.id, %note, "capture status can never be written whole");
                if record.status == CaptureStatus::Success {
                    record.error_message = Some(match record.error_message.take() {
                        Some(e) => format!("{e}; {note}"),
                        None => note,
                    });
                } else {
                    record.status = CaptureStatus::Failed;
                    record.error_message = Some(format!("{note}; the capture ends here"));
                }
                record.pops.clear();
                let written = self
                    .repo
                    .update_capture(&record.account_id, &record.id, |r| {
                        r.status = record.status;
                        r.error_message = record.error_message.clone();
                        r.packets_captured = record.packets_captured;
                        r.pops.clear();
                    })
                    .await;
                written.is_ok()
            }
            Err(error) => {
                // Kept in memory and written at the next attempt: results are not lost to an outage.
                tracing::warn!(capture = %record.id, %error, "capture status not written; will retry");
                false
            }
        }
    }

    /// Follows one capture to its end (leader only; cancelled when leadership is lost), as
    /// part of the trace of the request that created it.
    async fn run(self: Arc<Self>, record: CaptureRecord, cancel: CancellationToken) {
        let span = tracing::info_span!("full_capture", capture = %record.id, leader = %self.name);
        edgecap_telemetry::continue_trace(&span, &record.traceparent);
        tracing::Instrument::instrument(self.follow(record, cancel), span).await;
    }

    async fn follow(self: Arc<Self>, mut record: CaptureRecord, cancel: CancellationToken) {
        let id = record.id.clone();
        let started = Instant::now();
        // Deadlines count from when this leader took the capture over: a new leader gives
        // PoPs the full allowance again rather than failing them for its predecessor's time.
        let deadline = started + Duration::from_secs(record.time_limit) + START_DEADLINE + self.settings.upload_grace;
        let mut gone_since: HashMap<String, Instant> = HashMap::new();
        // The capture's agents as accepted (the record's PoPs may be cleared below).
        let roster: Vec<String> = record.pops.iter().map(|p| p.agent_id.clone()).collect();
        let mut jobs_checked = false;
        // The first read after a moment, not at once, and the watch on the PoPs opened then:
        // a runner starts as its capture does, and reading 300 PoPs and agents, or 300 watch
        // events of PoPs starting, would share the CPU with the PoPs' starts.
        let mut tick = tokio::time::interval_at(Instant::now() + FIRST_READ, FOLLOW_EVERY);
        let mut finals = super::wakes::Wakes::none();
        let mut watching = false;
        tracing::info!(capture = %id, pops = record.pops.len(), "following full capture");
        while matches!(record.status, CaptureStatus::Pending | CaptureStatus::Running) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                () = finals.next() => {
                    if !finals.gather(GATHER, &cancel).await {
                        return;
                    }
                    tick.reset();
                }
            }
            if !watching {
                // Before the read: a PoP written final in between is seen by one or the other.
                finals = super::wakes::Wakes::final_pops(&self.repo, &id).await;
                watching = true;
            }
            let (pops, present) = match (self.repo.list_pops(&id).await, self.repo.list_agents().await) {
                (Ok(p), Ok(a)) => (p, a.into_iter().map(|a| a.agent_id).collect::<HashSet<_>>()),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(capture = %id, error = %e, "state unreadable; capture goes on");
                    continue;
                }
            };
            // A PoP without a key has not reported yet: the record's copy (pending) stands
            // for it, and it is failed like any other.
            let keyed: HashSet<String> = pops.iter().map(|p| p.agent_id.clone()).collect();
            let current = record.merged_pops(pops);
            let now = Instant::now();
            for pop in current.iter().filter(|p| !p.is_final()) {
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
                    self.fail_pop(&id, pop, keyed.contains(&pop.agent_id), reason).await;
                }
            }
            if !jobs_checked && now - started > JOBS_CHECKED_AFTER {
                // Once no start can reach an agent any more: a PoP that never reported and has
                // no job was left behind by a replica that died while writing the jobs.
                jobs_checked = self.fail_pops_without_jobs(&id, &current, &keyed).await;
            }
            let before = (record.status, record.pops.clone());
            record.view_merged(current);
            if !record.pops.is_empty() && record.pops.iter().all(PopResult::is_final) {
                record.status = CaptureStatus::ConversionPending;
            }
            if (record.status, record.pops.clone()) != before {
                self.persist(&mut record).await;
            }
        }
        if cancel.is_cancelled() {
            return;
        }
        if record.status.is_final() {
            // Ended while running (its record outgrew the store): nothing to merge.
            let mut agents = roster.clone();
            for pop in self.repo.list_pops(&id).await.unwrap_or_default() {
                if !agents.contains(&pop.agent_id) {
                    agents.push(pop.agent_id);
                }
            }
            // The jobs first, so that no new grant follows the abort (one already past its
            // check finds its job gone and aborts its own upload); the active index last, so
            // that a leader dying before the abort leaves the capture to the next one.
            let _ = self.repo.delete_capture_jobs(&id, &agents).await;
            self.abort_open_uploads(&id).await;
            // The rest of its working keys (no agent's: those are gone).
            let _ = self.repo.delete_capture_work(&id, &[]).await;
            return;
        }
        self.convert(record, cancel).await;
    }

    /// Fails the PoPs of `current` that never reported (no key in `keyed`) and have no job;
    /// `false` when the jobs could not be read (to be tried again).
    async fn fail_pops_without_jobs(&self, capture: &str, current: &[PopResult], keyed: &HashSet<String>) -> bool {
        let silent: Vec<&PopResult> =
            current.iter().filter(|p| !p.is_final() && !keyed.contains(&p.agent_id)).collect();
        if silent.is_empty() {
            return true;
        }
        let with_jobs = match self.repo.agents_with_jobs(capture).await {
            Ok(agents) => agents,
            Err(error) => {
                tracing::warn!(%capture, %error, "jobs unreadable; checked again at the next round");
                return false;
            }
        };
        for pop in silent.into_iter().filter(|p| !with_jobs.contains(&p.agent_id)) {
            let reason = "the capture's job for this PoP was never written (its coordinator failed while accepting it)";
            self.fail_pop(capture, pop, false, reason.into()).await;
        }
        true
    }

    /// Fails a PoP that is still open (compare-and-swap: an agent's final report that won
    /// the race is kept). `keyed`: whether its key was there when `pop` was read (if not,
    /// `pop` is the record's copy and the key is created, unless a report did first).
    async fn fail_pop(&self, capture: &str, pop: &PopResult, keyed: bool, reason: String) {
        let agent = &pop.agent_id;
        let failed = self
            .repo
            .update_pop(capture, agent, (!keyed).then_some(pop), |pop| {
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

#[cfg(test)]
#[path = "follow_tests.rs"]
mod tests;
