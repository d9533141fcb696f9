//! Agents' progress reports, folded into their PoPs' keys in batches.
//!
//! Every agent reports each running capture once a second. Written one by one (a read and a
//! compare-and-swap each) that was a write per PoP-capture per second: 3 000 a second for 300
//! PoPs x 10 captures, about twice what this machine's etcd takes. Here the replica that
//! receives a report queues it, and a flusher writes the queued PoPs of a capture with one
//! read of its PoP keys and one compare-and-swap transaction per [`POPS_PER_WRITE`] PoPs:
//!
//! * a report that changes something a user waits for (its status, an error, a stop reason,
//!   or the first from that agent for that capture here) is written within [`LINGER`], with
//!   whatever else came in meanwhile;
//! * counters alone are written at most every [`COUNTERS_EVERY`] per PoP.
//!
//! A transaction that loses a race (the leader failed a PoP, an upload was committed) is
//! redone key by key; reports that could not be written (store unreachable) stay queued and
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
pub(super) const LINGER: Duration = Duration::from_millis(10);
/// How often a PoP's counters alone are written.
pub(super) const COUNTERS_EVERY: Duration = Duration::from_secs(5);
/// The flusher's round when nothing urgent comes.
const ROUND: Duration = Duration::from_secs(1);
/// PoPs per transaction (a compare and a put each: under etcd's 128 operations).
const POPS_PER_WRITE: usize = 64;
/// Reports kept per PoP while its writes fail (the oldest go first; later reports carry the
/// same counters, and statuses only move forward).
const MAX_QUEUED: usize = 32;
/// What the replica remembers of a PoP it wrote, after its last report.
const FORGET_AFTER: Duration = Duration::from_secs(600);

type Pop = (String, String); // (capture, agent)

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
    /// When this replica last wrote each PoP, and the status it wrote.
    written: HashMap<Pop, (Instant, Option<PopStatus>)>,
}

/// A report that carries only counters (and clock) for a status already known.
fn plain(report: &pb::CaptureReport) -> bool {
    report.error.is_empty() && convert::report_stop_reason(report).is_none()
}

impl State {
    /// Whether the PoP's queue holds something a user waits for.
    fn urgent(&self, pop: &Pop) -> bool {
        let Some(queue) = self.queued.get(pop) else { return false };
        let Some((_, status)) = self.written.get(pop) else { return !queue.is_empty() };
        queue.iter().any(|r| !plain(r) || convert::report_status(r).is_some_and(|s| Some(s) != *status))
    }

    fn due(&self, pop: &Pop, all: bool) -> bool {
        all || self.urgent(pop) || self.written.get(pop).is_none_or(|(at, _)| at.elapsed() >= COUNTERS_EVERY)
    }
}

/// Folds an agent's report into its PoP's state (never out of a final state).
pub(super) fn apply_report(pop: &mut PopResult, report: &pb::CaptureReport) {
    if pop.is_final() {
        return;
    }
    if let Some(c) = &report.counters {
        pop.packets = c.written;
        pop.matched = c.matched;
        pop.received = c.received;
        pop.kernel_dropped = c.kernel_dropped;
        pop.agent_dropped = c.agent_dropped;
        pop.bytes = c.bytes_written;
        pop.excluded = c.excluded;
    }
    pop.stream_dropped = pop.stream_dropped.max(report.stream_dropped);
    if let Some(clock) = &report.clock {
        pop.clock_offset_us = Some(clock.offset_ns / 1000);
        pop.clock_uncertainty_us = Some(clock.uncertainty_ns.div_ceil(1000));
    }
    if let Some(reason) = convert::report_stop_reason(report) {
        pop.stop_reason = Some(reason);
    }
    if !report.error.is_empty() {
        pop.error = Some(report.error.clone());
    }
    if let Some(status) = convert::report_status(report) {
        pop.status = status;
    }
}

impl Progress {
    /// Queues a report from `agent`; wakes the flusher if it is urgent.
    pub(crate) fn push(&self, agent: &str, report: pb::CaptureReport) {
        let key = (report.capture_id.clone(), agent.to_string());
        let mut state = lock(&self.state);
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
        self.flush(&repo, true).await;
    }

    /// Writes the PoPs that are due (`all`: every queued one), capture by capture.
    pub(crate) async fn flush(&self, repo: &Repo, all: bool) {
        let taken: Vec<(Pop, Vec<pb::CaptureReport>)> = {
            let mut state = lock(&self.state);
            let due: Vec<Pop> = state.queued.keys().filter(|k| state.due(k, all)).cloned().collect();
            let now = Instant::now();
            state.written.retain(|_, (at, status)| {
                now.duration_since(*at) < FORGET_AFTER && !status.is_some_and(PopStatus::is_final)
            });
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
        let mut changed: Vec<(Revision, PopResult, PopStatus, Vec<pb::CaptureReport>)> = Vec::new();
        for (agent, reports) in pops {
            // Not a PoP of this capture (or not readable as one): nothing to fold into.
            let Some((before, revision)) = current.get(&agent) else { continue };
            let mut pop = before.clone();
            for report in &reports {
                apply_report(&mut pop, report);
            }
            if pop != *before {
                changed.push((*revision, pop, before.status, reports));
            } else {
                self.mark_written(capture, &agent, pop.status);
            }
        }
        for chunk in changed.chunks(POPS_PER_WRITE) {
            let batch: Vec<(Revision, PopResult)> = chunk.iter().map(|(r, p, _, _)| (*r, p.clone())).collect();
            match repo.cas_pops(capture, &batch).await {
                Ok(true) => {
                    for (_, pop, before, _) in chunk {
                        self.written(capture, pop, *before);
                    }
                }
                // A key was written meanwhile: each PoP on its own, read again.
                Ok(false) => {
                    for (_, pop, before, reports) in chunk {
                        let written = repo
                            .update_pop(capture, &pop.agent_id, |p| reports.iter().for_each(|r| apply_report(p, r)))
                            .await;
                        match written {
                            Ok(Some(now)) => self.written(capture, &now, *before),
                            Ok(None) => self.mark_written(capture, &pop.agent_id, pop.status),
                            Err(error) => {
                                tracing::warn!(%capture, agent = %pop.agent_id, %error, "PoP progress not written; will retry");
                                self.requeue(capture, vec![(pop.agent_id.clone(), reports.clone())]);
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%capture, %error, pops = chunk.len(), "PoP progress not written; will retry");
                    self.requeue(capture, chunk.iter().map(|(_, p, _, r)| (p.agent_id.clone(), r.clone())).collect());
                }
            }
        }
    }

    /// Records a PoP written, and its status move for `bench/scale.py full --timeline`.
    fn written(&self, capture: &str, pop: &PopResult, before: PopStatus) {
        if pop.status != before {
            tracing::debug!(target: "edgecap_timeline", %capture, agent = %pop.agent_id, status = ?pop.status, "PoP state written");
        }
        self.mark_written(capture, &pop.agent_id, pop.status);
    }

    fn mark_written(&self, capture: &str, agent: &str, status: PopStatus) {
        lock(&self.state).written.insert((capture.to_string(), agent.to_string()), (Instant::now(), Some(status)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(capture: &str, state: pb::CaptureState, written: u64) -> pb::CaptureReport {
        pb::CaptureReport {
            capture_id: capture.into(),
            capture_state: state as i32,
            counters: Some(pb::CaptureCounters { written, ..Default::default() }),
            ..Default::default()
        }
    }

    async fn repo_with_pops(agents: &[&str]) -> Repo {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        for agent in agents {
            repo.cas_pop("c1", agent, None, &PopResult::new("ord", agent, PopStatus::Pending)).await.unwrap();
        }
        repo
    }

    async fn pop(repo: &Repo, agent: &str) -> PopResult {
        repo.get_pop("c1", agent).await.unwrap().unwrap().0
    }

    #[tokio::test]
    async fn states_are_written_at_once_and_counters_alone_at_most_every_interval() {
        let repo = repo_with_pops(&["a", "b"]).await;
        let progress = Progress::default();
        progress.push("a", report("c1", pb::CaptureState::Running, 1));
        progress.push("b", report("c1", pb::CaptureState::Running, 2));
        // Not a PoP of the capture: dropped, no key made.
        progress.push("x", report("c1", pb::CaptureState::Running, 3));
        progress.flush(&repo, false).await;
        assert_eq!((pop(&repo, "a").await.status, pop(&repo, "a").await.packets), (PopStatus::Running, 1));
        assert_eq!(pop(&repo, "b").await.packets, 2);
        assert!(repo.get_pop("c1", "x").await.unwrap().is_none());
        assert!(lock(&progress.state).queued.is_empty());

        // New counters only: they wait for their interval (or a flush of everything).
        progress.push("a", report("c1", pb::CaptureState::Running, 10));
        progress.push("a", report("c1", pb::CaptureState::Running, 11));
        progress.flush(&repo, false).await;
        assert_eq!(pop(&repo, "a").await.packets, 1, "counters alone are not written yet");
        assert_eq!(
            lock(&progress.state).queued[&("c1".into(), "a".into())].len(),
            1,
            "the newer report replaced the older"
        );
        progress.flush(&repo, true).await;
        assert_eq!(pop(&repo, "a").await.packets, 11);

        // An end with an error is urgent.
        let mut end = report("c1", pb::CaptureState::Failed, 5);
        end.error = "disk gone".into();
        progress.push("b", end);
        progress.flush(&repo, false).await;
        let b = pop(&repo, "b").await;
        assert_eq!((b.status, b.error.as_deref(), b.packets), (PopStatus::Failed, Some("disk gone"), 5));
        // A final state is never left.
        progress.push("b", report("c1", pb::CaptureState::Running, 6));
        progress.flush(&repo, true).await;
        assert_eq!(pop(&repo, "b").await.status, PopStatus::Failed);
    }

    #[tokio::test]
    async fn a_stale_batch_writes_nothing_and_reports_fold_onto_what_others_wrote() {
        let repo = repo_with_pops(&["a", "b"]).await;
        let progress = Progress::default();
        progress.push("a", report("c1", pb::CaptureState::Running, 1));
        progress.push("b", report("c1", pb::CaptureState::Running, 1));
        progress.flush(&repo, true).await;
        // Read for the batch, then written by someone else before the transaction: simulated
        // by writing between the queueing and the flush with a revision the batch cannot know.
        progress.push("a", report("c1", pb::CaptureState::Uploading, 7));
        progress.push("b", report("c1", pb::CaptureState::Uploading, 8));
        let current = repo.pops_with_revisions("c1").await.unwrap();
        repo.update_pop("c1", "a", |p| p.error = Some("noted by the leader".into())).await.unwrap();
        let stale: Vec<(Revision, PopResult)> =
            ["a", "b"].iter().map(|a| (current[*a].1, PopResult { packets: 99, ..current[*a].0.clone() })).collect();
        assert!(!repo.cas_pops("c1", &stale).await.unwrap(), "a changed since it was read: nothing written");
        assert_eq!(pop(&repo, "b").await.packets, 1);
        progress.flush(&repo, false).await;
        let a = pop(&repo, "a").await;
        assert_eq!((a.status, a.packets, a.error.as_deref()), (PopStatus::Uploading, 7, Some("noted by the leader")));
        assert_eq!(pop(&repo, "b").await.status, PopStatus::Uploading);
    }

    #[tokio::test]
    async fn the_flusher_writes_a_first_report_without_waiting_for_its_round() {
        let repo = repo_with_pops(&["a"]).await;
        let progress = std::sync::Arc::new(Progress::default());
        let cancel = CancellationToken::new();
        let runner = tokio::spawn({
            let (progress, repo, cancel) = (progress.clone(), repo.clone(), cancel.clone());
            async move { progress.run(repo, cancel).await }
        });
        progress.push("a", report("c1", pb::CaptureState::Running, 1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while pop(&repo, "a").await.status != PopStatus::Running {
            assert!(Instant::now() < deadline, "never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // What is queued when it ends is written on the way out.
        progress.push("a", report("c1", pb::CaptureState::Running, 42));
        cancel.cancel();
        runner.await.unwrap();
        assert_eq!(pop(&repo, "a").await.packets, 42);
    }
}
