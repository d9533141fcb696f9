//! Agents' progress reports, folded into their PoPs' keys in batches.
//!
//! Every agent reports each running capture once a second. Written one by one (a read and a
//! compare-and-swap each) that was a write per PoP-capture per second: 3 000 a second for 300
//! PoPs x 10 captures, about twice what this machine's etcd takes. Here the replica that
//! receives a report queues it, and a flusher writes the queued PoPs of a capture with one
//! read of its PoP keys and compare-and-swap transactions of at most
//! [`crate::store::MAX_TXN_KEYS`] PoPs:
//!
//! * a report that changes something a user waits for (its status, an error, a stop reason,
//!   or the first from that agent for that capture here) is written within [`LINGER`], with
//!   whatever else came in meanwhile;
//! * counters alone are written at most every [`COUNTERS_EVERY`] per PoP.
//!
//! A PoP's key is created by the first report written for it (until then the capture
//! record's copy, pending, stands for it; the record is read for that, through the active
//! index, and kept [`ROSTER_FOR`] for the start's next rounds). A transaction that loses a race (the leader failed a PoP, an upload was committed)
//! is redone key by key; reports that could not be written (store unreachable) stay queued and
//! are tried again at the next round, so nothing an agent reported is lost to an outage.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgecap_common::lock;
use edgecap_proto::agent::v1 as pb;
use edgecap_state::Revision;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::convert;
use crate::model::{PopResult, PopStatus};
use crate::store::Repo;

/// How long an urgent report waits for others to share its write.
const LINGER: Duration = Duration::from_millis(10);
/// How often a PoP's counters alone are written.
const COUNTERS_EVERY: Duration = Duration::from_secs(5);
/// The flusher's round when nothing urgent comes.
const ROUND: Duration = Duration::from_secs(1);
/// Reports kept per PoP while its writes fail (the oldest go first; later reports carry the
/// same counters, and statuses only move forward).
const MAX_QUEUED: usize = 32;
/// How long the last flush at shutdown keeps trying (under the coordinator's shutdown grace).
const FINAL_TRIES: Duration = Duration::from_secs(3);
/// What the replica remembers of a PoP it wrote, after its last report.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How long a capture's PoPs as its record lists them are kept for the PoPs' first reports
/// (a start's reports come in several rounds; each had read the whole record).
const ROSTER_FOR: Duration = Duration::from_secs(10);
/// How often what is older than [`FORGET_AFTER`] is looked for (at every flush, the
/// remembered PoPs of the last ten minutes' captures had all been visited).
const PRUNE_EVERY: Duration = Duration::from_secs(10);

type Pop = (String, String); // (capture, agent)
/// A PoP to write.
struct Changed {
    /// The revision read; `None`: the key was absent (created by this write).
    revision: Option<Revision>,
    /// The state read (or the record's copy, for an absent key).
    before: PopResult,
    pop: PopResult,
    reports: Vec<pb::CaptureReport>,
}

/// Queued reports and what was last written, per PoP. See the module docs.
#[derive(Default)]
pub(crate) struct Progress {
    state: Mutex<State>,
    urgent: Notify,
}

#[derive(Default)]
struct State {
    /// Reports not written yet, in arrival order.
    queued: HashMap<Pop, Vec<pb::CaptureReport>>,
    /// What this replica last saw in each PoP's key when it wrote (or read) it.
    written: HashMap<Pop, Written>,
    /// When `written` was last pruned.
    pruned: Option<Instant>,
    /// Captures' PoPs as their records list them, by agent, when read (see [`ROSTER_FOR`]).
    /// Which agents a capture has never changes, and the record's copy of a PoP without a key
    /// is the pending state it was created with.
    rosters: HashMap<String, (Instant, std::sync::Arc<HashMap<String, PopResult>>)>,
}

/// A PoP as last written (or found) by this replica.
struct Written {
    at: Instant,
    /// `None`: the capture has no such PoP (reports for it are dropped at their round).
    pop: Option<(PopStatus, Option<crate::model::StopReason>, Option<String>)>,
}

/// The longest error text kept from a report (an agent's error is one line; this bounds
/// what a faulty one can put into the state store).
const MAX_ERROR_BYTES: usize = 2048;

impl State {
    /// Whether the PoP's queue holds something a user waits for: a status, stop reason or
    /// error other than the one written; or anything for a PoP not written here yet.
    fn urgent(&self, key: &Pop) -> bool {
        let Some(queue) = self.queued.get(key) else { return false };
        let Some(written) = self.written.get(key) else { return !queue.is_empty() };
        let Some((status, stop, error)) = &written.pop else { return false };
        !status.is_final()
            && queue.iter().any(|r| {
                convert::report_status(r).is_some_and(|s| s != *status)
                    || convert::report_stop_reason(r).is_some_and(|s| Some(s) != *stop)
                    || (!r.error.is_empty() && Some(&r.error) != error.as_ref())
            })
    }

    fn due(&self, key: &Pop, all: bool) -> bool {
        all || self.urgent(key) || self.written.get(key).is_none_or(|w| w.at.elapsed() >= COUNTERS_EVERY)
    }
}

impl Progress {
    /// Queues a report from `agent`; wakes the flusher if it is urgent.
    pub(crate) fn push(&self, agent: &str, mut report: pb::CaptureReport) {
        if report.error.len() > MAX_ERROR_BYTES {
            let mut end = MAX_ERROR_BYTES;
            while !report.error.is_char_boundary(end) {
                end -= 1;
            }
            report.error.truncate(end);
            report.error.push_str(" [cut]");
        }
        let key = (report.capture_id.clone(), agent.to_string());
        let mut state = lock(&self.state);
        // A PoP seen final here stays final (a report never moves it): an agent's repeat of
        // its final state is dropped, not queued for a read of its capture's PoPs.
        if state.written.get(&key).is_some_and(|w| w.pop.as_ref().is_some_and(|(status, ..)| status.is_final())) {
            return;
        }
        let queue = state.queued.entry(key.clone()).or_default();
        // A report with only newer counters for the same status replaces the one before.
        match queue.last_mut() {
            Some(last)
                if plain(last) && plain(&report) && convert::report_status(last) == convert::report_status(&report) =>
            {
                *last = report;
            }
            _ => queue.push(report),
        }
        if queue.len() > MAX_QUEUED {
            queue.remove(0);
        }
        if state.urgent(&key) {
            drop(state);
            self.urgent.notify_one();
        }
    }

    /// Writes queued reports until `cancel`: urgent ones within [`LINGER`], the rest every
    /// round; at the end, what is queued once more.
    pub(crate) async fn run(&self, repo: Repo, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.urgent.notified() => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(LINGER) => {}
                    }
                }
                _ = tokio::time::sleep(ROUND) => {}
            }
            self.flush(&repo, false).await;
        }
        // On the way out, what is queued is written, tried again (a store that fails is
        // requeued) for at most FINAL_TRIES.
        let until = Instant::now() + FINAL_TRIES;
        loop {
            self.flush(&repo, true).await;
            if lock(&self.state).queued.is_empty() || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let left = lock(&self.state).queued.len();
        if left > 0 {
            tracing::warn!(
                pops = left,
                "PoP progress not written at shutdown (the agents report it again to the next replica)"
            );
        }
    }

    /// Writes the PoPs that are due (`all`: every queued one), capture by capture.
    pub(crate) async fn flush(&self, repo: &Repo, all: bool) {
        let taken: Vec<(Pop, Vec<pb::CaptureReport>)> = {
            let mut state = lock(&self.state);
            let due: Vec<Pop> = state.queued.keys().filter(|k| state.due(k, all)).cloned().collect();
            let now = Instant::now();
            if state.pruned.is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY) {
                state.written.retain(|_, w| now.duration_since(w.at) < FORGET_AFTER);
                state.rosters.retain(|_, (at, _)| now.duration_since(*at) < ROSTER_FOR);
                state.pruned = Some(now);
            }
            due.into_iter().filter_map(|k| state.queued.remove(&k).map(|q| (k, q))).collect()
        };
        let mut by_capture: HashMap<String, Vec<(String, Vec<pb::CaptureReport>)>> = HashMap::new();
        for ((capture, agent), reports) in taken {
            by_capture.entry(capture).or_default().push((agent, reports));
        }
        for (capture, pops) in by_capture {
            self.write_capture(repo, &capture, pops).await;
        }
    }

    /// Folds the reports of one capture's PoPs into their keys.
    async fn write_capture(&self, repo: &Repo, capture: &str, pops: Vec<(String, Vec<pb::CaptureReport>)>) {
        let current = match repo.pops_with_revisions(capture).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%capture, %error, "PoP progress not written; will retry");
                return self.requeue(capture, pops);
            }
        };
        // PoPs without a key have not reported before: they start from the record's copy.
        let mut roster = std::sync::Arc::new(HashMap::new());
        if pops.iter().any(|(agent, _)| !current.contains_key(agent)) {
            match self.roster(repo, capture).await {
                Ok(found) => roster = found,
                Err(error) => {
                    tracing::warn!(%capture, %error, "PoP progress not written; will retry");
                    return self.requeue(capture, pops);
                }
            }
        }
        let mut changed: Vec<Changed> = Vec::new();
        for (agent, reports) in pops {
            let (before, revision) = match current.get(&agent) {
                Some((before, revision)) => (before.clone(), Some(*revision)),
                // A PoP of this capture not written yet (a skipped one never is).
                None => match roster.get(&agent).filter(|p| !p.is_final()) {
                    Some(before) => (before.clone(), None),
                    // Not a PoP of this capture (or not readable as one, or the capture is
                    // over): nothing to fold into.
                    None => {
                        self.mark_not_a_pop(capture, &agent);
                        continue;
                    }
                },
            };
            let mut pop = before.clone();
            for report in &reports {
                apply_report(&mut pop, report);
            }
            if pop != before {
                changed.push(Changed { revision, before, pop, reports });
            } else {
                self.mark_written(capture, &pop);
            }
        }
        // The transactions at once: their keys are disjoint, and one after another they had
        // taken a round of 300 PoPs' first reports ~5 etcd writes long.
        let writes = crate::store::txn_chunks(&changed, 1).map(|chunk| self.write_chunk(repo, capture, chunk));
        futures::future::join_all(writes).await;
    }

    /// A capture's PoPs as its record lists them (empty once it is over), read at most every
    /// [`ROSTER_FOR`] while its PoPs' first reports come in.
    async fn roster(
        &self,
        repo: &Repo,
        capture: &str,
    ) -> crate::store::Result<std::sync::Arc<HashMap<String, PopResult>>> {
        if let Some((at, roster)) = lock(&self.state).rosters.get(capture)
            && at.elapsed() < ROSTER_FOR
        {
            return Ok(roster.clone());
        }
        let Some(record) = repo.active_capture(capture).await? else { return Ok(Default::default()) };
        let roster: std::sync::Arc<HashMap<String, PopResult>> =
            std::sync::Arc::new(record.pops.into_iter().map(|p| (p.agent_id.clone(), p)).collect());
        lock(&self.state).rosters.insert(capture.to_string(), (Instant::now(), roster.clone()));
        Ok(roster)
    }

    /// Writes one transaction's worth of a capture's changed PoPs (key by key if it loses).
    async fn write_chunk(&self, repo: &Repo, capture: &str, chunk: &[Changed]) {
        let batch: Vec<(Option<Revision>, PopResult)> = chunk.iter().map(|c| (c.revision, c.pop.clone())).collect();
        match repo.cas_pops(capture, &batch).await {
            Ok(true) => {
                for c in chunk {
                    self.written(capture, &c.pop, c.before.status);
                }
            }
            // A key was written meanwhile, or the batch is over the store's request size:
            // each PoP on its own, read again.
            Ok(false) | Err(crate::store::RepoError::State(edgecap_state::StateError::TooLarge { .. })) => {
                for Changed { revision, before, pop, reports } in chunk {
                    // A key absent at the read is created from the record's copy, unless a
                    // report on another replica (or the leader) created it since.
                    let initial = revision.is_none().then_some(before);
                    let written = repo
                        .update_pop(capture, &pop.agent_id, initial, |p| {
                            reports.iter().for_each(|r| apply_report(p, r))
                        })
                        .await;
                    match written {
                        Ok(Some(now)) => self.written(capture, &now, before.status),
                        // Unchanged, absent, or lost the race five times: what the key holds
                        // is not known here.
                        Ok(None) => self.mark_unsure(capture, pop),
                        Err(crate::store::RepoError::State(edgecap_state::StateError::TooLarge { .. })) => {
                            tracing::error!(%capture, agent = %pop.agent_id, "PoP progress larger than the state store takes; dropped");
                            self.mark_unsure(capture, pop);
                        }
                        // A key that does not decode (left out of the batch's read, so taken
                        // for absent): nothing to fold into, as for a PoP not of the capture;
                        // tried again at every round, it would have been retried forever.
                        Err(error @ crate::store::RepoError::Decode { .. }) => {
                            tracing::error!(%capture, agent = %pop.agent_id, %error, "PoP progress dropped");
                            self.mark_not_a_pop(capture, &pop.agent_id);
                        }
                        Err(error) => {
                            tracing::warn!(%capture, agent = %pop.agent_id, %error, "PoP progress not written; will retry");
                            self.requeue(capture, vec![(pop.agent_id.clone(), reports.clone())]);
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%capture, %error, pops = chunk.len(), "PoP progress not written; will retry");
                self.requeue(capture, chunk.iter().map(|c| (c.pop.agent_id.clone(), c.reports.clone())).collect());
            }
        }
    }

    /// Records a PoP written, and its status move for `bench/scale.py full --timeline`.
    fn written(&self, capture: &str, pop: &PopResult, before: PopStatus) {
        if pop.status != before {
            tracing::debug!(target: "edgecap_timeline", %capture, agent = %pop.agent_id, status = ?pop.status, "PoP state written");
        }
        self.mark_written(capture, pop);
    }

    fn mark_written(&self, capture: &str, pop: &PopResult) {
        let seen = Written { at: Instant::now(), pop: Some((pop.status, pop.stop_reason, pop.error.clone())) };
        lock(&self.state).written.insert((capture.to_string(), pop.agent_id.clone()), seen);
    }

    /// Records that `agent` has no PoP of `capture` to fold reports into (its reports are
    /// dropped at their round).
    fn mark_not_a_pop(&self, capture: &str, agent: &str) {
        let key = (capture.to_string(), agent.to_string());
        lock(&self.state).written.insert(key, Written { at: Instant::now(), pop: None });
    }

    /// Records a PoP as computed here when the store may hold something else: a final state
    /// is not remembered (the agent's repeats of a final state seen here are dropped unread,
    /// so it must be one the store holds); its next report is read and written again.
    fn mark_unsure(&self, capture: &str, pop: &PopResult) {
        if pop.is_final() {
            lock(&self.state).written.remove(&(capture.to_string(), pop.agent_id.clone()));
        } else {
            self.mark_written(capture, pop);
        }
    }

    /// Puts reports that could not be written back in front of any that came since.
    fn requeue(&self, capture: &str, pops: Vec<(String, Vec<pb::CaptureReport>)>) {
        let mut state = lock(&self.state);
        for (agent, mut reports) in pops {
            let queue = state.queued.entry((capture.to_string(), agent)).or_default();
            reports.append(queue);
            let excess = reports.len().saturating_sub(MAX_QUEUED);
            reports.drain(..excess);
            *queue = reports;
        }
    }
}

#[path = "progress_fold.rs"]
mod fold;
use fold::{apply_report, plain};

#[cfg(test)]
#[path = "progress_tests.rs"]
mod tests;
