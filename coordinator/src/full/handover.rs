//! Jobs handed to this replica's own agents as soon as their write commits, rather than when
//! the write comes back through the watch on the jobs (for 300 PoPs, 11-23 ms later: the
//! watch delivers the jobs one after another). A job is marked before its write; the watch
//! skips the first version of a marked job, so each agent gets its start once, whichever of
//! the two gets there first. Jobs of agents connected to other replicas go through the watch
//! as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgecap_common::lock;

use super::FullCaptures;
use crate::convert;
use crate::model::JobRecord;

/// A mark the watch has not met after this long is dropped (the watch restarted past the
/// job's first version; its catch-up sent the job again).
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Jobs handed over (or about to be) by this replica whose first version the watch has not
/// delivered yet.
#[derive(Default)]
pub(super) struct HandedOver {
    marks: Mutex<HashMap<(String, String), Instant>>,
}

fn key(job: &JobRecord) -> (String, String) {
    (job.agent_id.clone(), job.capture_id.clone())
}

impl HandedOver {
    fn mark(&self, jobs: &[&JobRecord]) {
        let now = Instant::now();
        let mut marks = lock(&self.marks);
        marks.retain(|_, at| now.duration_since(*at) < FORGET_AFTER);
        marks.extend(jobs.iter().map(|job| (key(job), now)));
    }

    /// Whether the job is marked; the mark is removed (true once).
    pub(super) fn take(&self, job: &JobRecord) -> bool {
        lock(&self.marks).remove(&key(job)).is_some()
    }

    /// Removes the marks of jobs that were not written.
    fn unmark(&self, jobs: &[&JobRecord]) {
        let mut marks = lock(&self.marks);
        for job in jobs {
            marks.remove(&key(job));
        }
    }
}

/// The step `bench/scale.py full --timeline` times: a job handed to its agent's stream.
pub(super) fn timeline_sent(job: &JobRecord) {
    tracing::debug!(target: "edgecap_timeline", capture = %job.capture_id, agent = %job.agent_id, "job sent");
}

impl FullCaptures {
    /// Marks, before they are written, the new jobs whose agents are connected here.
    pub(super) fn mark_for_handover<'a>(&self, jobs: &'a [JobRecord]) -> Vec<&'a JobRecord> {
        let here: Vec<&JobRecord> = jobs.iter().filter(|job| self.registry.is_connected(&job.agent_id)).collect();
        self.handed_over.mark(&here);
        here
    }

    /// After the write: hands the marked jobs to their agents (`written`), or removes the
    /// marks (the write failed or was refused: the watch forwards whatever is written later).
    pub(super) async fn hand_over(&self, here: &[&JobRecord], written: bool) {
        if !written {
            self.handed_over.unmark(here);
            return;
        }
        for job in here {
            if self.registry.try_send(&job.agent_id, convert::start_message(job)) {
                timeline_sent(job);
            } else if !self.handed_over.take(job) {
                // Its stream's queue is full (or it just left), and the watch already passed
                // the job by: it is sent here, when there is room.
                if self.registry.send(&job.agent_id, convert::start_message(job)).await {
                    timeline_sent(job);
                }
            }
            // Otherwise the mark is gone and the watch forwards the job when it meets it.
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use edgecap_proto::agent::v1 as pb;
    use tokio::sync::mpsc;

    use super::*;
    use crate::agents::{AgentInfo, Registry};
    use crate::model::{CaptureRecord, CaptureRequest, CaptureType, PopResult, PopStatus};
    use crate::store::Repo;

    fn agent(id: &str) -> AgentInfo {
        AgentInfo::for_test(id, "ord01")
    }

    /// A replica whose agents are those of `registry`.
    fn replica(repo: &Repo, registry: &Arc<Registry>) -> FullCaptures {
        let (name, tmp) = ("t".to_string(), std::env::temp_dir());
        FullCaptures::new(
            repo.clone(),
            registry.clone(),
            name,
            Default::default(),
            Default::default(),
            tmp,
            Default::default(),
        )
    }

    type Received = mpsc::Receiver<Result<pb::CoordinatorMessage, tonic::Status>>;

    async fn next(rx: &mut Received) -> pb::coordinator_message::Msg {
        let message = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a message in time");
        message.expect("stream open").expect("not an error").msg.expect("a message")
    }

    /// An agent connected to the replica that writes its job gets its start once: handed
    /// over after the write, and skipped when the watch delivers the job's first version.
    /// A later version (a stop) is still forwarded from the watch.
    #[tokio::test]
    async fn a_job_handed_over_after_its_write_is_not_sent_again_by_the_watch() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let registry = Arc::new(Registry::default());
        let full = Arc::new(replica(&repo, &registry));
        // A job written before the agent connects and the forwarder starts: its arrival shows
        // the forwarder's catch-up is over (every job from here on comes through the watch
        // or a hand-over).
        let request = CaptureRequest { colo_name: Some("ord".into()), ..CaptureRequest::for_test(CaptureType::Full) };
        let mut earlier = CaptureRecord::from_request("acct", request.clone(), time::OffsetDateTime::now_utc());
        earlier.pops = vec![PopResult::new("ord01", "a", PopStatus::Pending)];
        full.submit(&earlier).await.unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        registry.register(agent("a"), tx);
        let cancel = tokio_util::sync::CancellationToken::new();
        let forwarder = tokio::spawn(full.clone().forward_jobs(cancel.clone()));
        assert!(
            matches!(next(&mut rx).await, pb::coordinator_message::Msg::StartCapture(s) if s.capture_id == earlier.id)
        );

        let mut record = CaptureRecord::from_request("acct", request, time::OffsetDateTime::now_utc());
        record.pops =
            vec![PopResult::new("ord01", "a", PopStatus::Pending), PopResult::new("ord02", "b", PopStatus::Pending)];
        full.submit(&record).await.unwrap();
        // Handed over before `submit` returned: no wait for the watch.
        let first = rx.try_recv().expect("the start, handed over").unwrap().msg.unwrap();
        assert!(matches!(first, pb::coordinator_message::Msg::StartCapture(s) if s.capture_id == record.id));
        full.request_stop(&record).await.unwrap();
        // The watch meets the job's first version (skipped), then its stop: start and stop.
        let mut starts = 1;
        loop {
            match next(&mut rx).await {
                pb::coordinator_message::Msg::StartCapture(s) => {
                    assert_eq!(s.capture_id, record.id);
                    starts += 1;
                }
                pb::coordinator_message::Msg::StopCapture(s) => {
                    assert_eq!(s.capture_id, record.id);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(starts, 2, "handed over once, then once with its stop; not again for its first version");
        assert!(full.handed_over.marks.lock().unwrap().is_empty(), "the mark was taken by the watch");
        cancel.cancel();
        forwarder.await.unwrap();
    }

    /// A write that is refused (a job of the group was there already: a retried submit)
    /// leaves no mark and hands nothing over: the watch forwards what the PoP-by-PoP retry
    /// writes.
    #[tokio::test]
    async fn a_refused_write_leaves_no_mark() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let registry = Arc::new(Registry::default());
        let (tx, mut rx) = mpsc::channel(64);
        registry.register(agent("a"), tx);
        let full = replica(&repo, &registry);
        let request = CaptureRequest { colo_name: Some("ord".into()), ..CaptureRequest::for_test(CaptureType::Full) };
        let mut record = CaptureRecord::from_request("acct", request, time::OffsetDateTime::now_utc());
        record.pops =
            vec![PopResult::new("ord01", "a", PopStatus::Pending), PopResult::new("ord02", "b", PopStatus::Pending)];
        repo.put_job(&super::super::jobs::job_for(&record, &record.pops[0], None, 1)).await.unwrap();
        full.submit(&record).await.unwrap();
        assert!(repo.get_job("b", &record.id).await.unwrap().is_some(), "the retry wrote b's job");
        assert!(full.handed_over.marks.lock().unwrap().is_empty(), "no mark left for a");
        assert!(rx.try_recv().is_err(), "nothing handed over");
    }
}
