//! Jobs handed to this replica's own agents as soon as their write commits, rather than when
//! the write comes back through the watch on the jobs (for 300 PoPs, 11-23 ms later: the
//! watch delivers the jobs one after another). A job is marked before its write; the watch
//! skips the first version of a marked job, so each agent gets its start once, whichever of
//! the two gets there first. A job the watch passed by that was not handed over after all
//! (its write answered an error though it committed, or its agent's queue was full) is sent
//! by the forwarder, from the store: the POST never waits on an agent. Jobs of agents
//! connected to other replicas go through the watch as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgecap_common::lock;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::FullCaptures;
use crate::convert;
use crate::model::JobRecord;

/// A mark the watch has not met after this long is dropped (the watch restarted past the
/// job's first version; its catch-up sent the job again).
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// An (agent, capture) pair: a job's name.
type JobName = (String, String);

/// Jobs handed over (or about to be) by this replica whose first version the watch has not
/// delivered yet, and jobs the watch passed by that are still to be sent.
#[derive(Default)]
pub(super) struct HandedOver {
    marks: Mutex<Marks>,
    to_send: Mutex<Vec<JobName>>,
    to_send_added: Notify,
}

#[derive(Default)]
struct Marks {
    by_job: HashMap<JobName, Instant>,
    /// When marks older than [`FORGET_AFTER`] were last dropped (at most once a second: the
    /// map can hold many while the watch is interrupted).
    pruned: Option<Instant>,
}

fn name(job: &JobRecord) -> JobName {
    (job.agent_id.clone(), job.capture_id.clone())
}

impl HandedOver {
    fn mark(&self, jobs: &[&JobRecord]) {
        let now = Instant::now();
        let mut marks = lock(&self.marks);
        if marks.pruned.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            marks.pruned = Some(now);
            marks.by_job.retain(|_, at| now.duration_since(*at) < FORGET_AFTER);
        }
        marks.by_job.extend(jobs.iter().map(|job| (name(job), now)));
    }

    /// Whether the job is marked; the mark is removed (true once).
    pub(super) fn take(&self, job: &JobRecord) -> bool {
        lock(&self.marks).by_job.remove(&name(job)).is_some()
    }

    /// Queues jobs for the forwarder to send from the store.
    fn send_later(&self, jobs: Vec<JobName>) {
        if !jobs.is_empty() {
            lock(&self.to_send).extend(jobs);
            self.to_send_added.notify_one();
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
    /// Never waits: a job the watch already passed by that is not sent here (its agent's
    /// queue is full, or the write answered an error although it committed: the watch saw
    /// it) is left to the forwarder ([`FullCaptures::send_passed_jobs`]).
    pub(super) fn hand_over(&self, here: &[&JobRecord], written: bool) {
        let mut passed = Vec::new();
        for job in here {
            if written && self.registry.try_send(&job.agent_id, convert::start_message(job)) {
                timeline_sent(job);
            } else if !self.handed_over.take(job) {
                passed.push(name(job));
            }
            // Otherwise the mark is gone now and the watch forwards the job if it meets it.
        }
        self.handed_over.send_later(passed);
    }

    /// Sends the jobs the watch passed by without sending them (see [`Self::hand_over`]), read
    /// again from the store (a stop may have been written since), until `cancel`. Runs beside
    /// the watch, in the forwarder.
    pub(super) async fn send_passed_jobs(&self, cancel: &CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.handed_over.to_send_added.notified() => {}
            }
            let jobs = std::mem::take(&mut *lock(&self.handed_over.to_send));
            for (at, (agent, capture)) in jobs.iter().enumerate() {
                match self.repo.get_job(agent, capture).await {
                    Ok(Some(job)) => self.forward(&job, false).await,
                    Ok(None) => {}
                    Err(error) => {
                        // Tried again in a second, with whatever was not sent yet.
                        tracing::warn!(%agent, %capture, %error, "could not read a job to send; trying again");
                        self.handed_over.send_later(jobs[at..].to_vec());
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        break;
                    }
                }
            }
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

    async fn memory_repo() -> Repo {
        Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap())
    }

    /// The replica's job forwarder, running until the token is cancelled.
    fn run_forwarder(full: &Arc<FullCaptures>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = CancellationToken::new();
        (cancel.clone(), tokio::spawn(full.clone().forward_jobs(cancel)))
    }

    /// A replica whose agents are those of `registry`.
    fn replica(repo: &Repo, registry: &Arc<Registry>) -> FullCaptures {
        FullCaptures::for_test_with_agents(repo.clone(), Default::default(), registry.clone())
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
        let repo = memory_repo().await;
        let registry = Arc::new(Registry::default());
        let full = Arc::new(replica(&repo, &registry));
        // A job written before the agent connects and the forwarder starts: its arrival shows
        // the forwarder's catch-up is over (every job from here on comes through the watch
        // or a hand-over).
        let earlier = one_pop_record();
        full.submit(&earlier).await.unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        registry.register(agent("a"), tx);
        let (cancel, forwarder) = run_forwarder(&full);
        assert!(
            matches!(next(&mut rx).await, pb::coordinator_message::Msg::StartCapture(s) if s.capture_id == earlier.id)
        );

        let record = two_pop_record();
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
        assert!(full.handed_over.marks.lock().unwrap().by_job.is_empty(), "the mark was taken by the watch");
        cancel.cancel();
        forwarder.await.unwrap();
    }

    /// A write that is refused (a job of the group was there already: a retried submit)
    /// leaves no mark and hands nothing over: the watch forwards what the PoP-by-PoP retry
    /// writes.
    #[tokio::test]
    async fn a_refused_write_leaves_no_mark() {
        let repo = memory_repo().await;
        let registry = Arc::new(Registry::default());
        let (tx, mut rx) = mpsc::channel(64);
        registry.register(agent("a"), tx);
        let full = replica(&repo, &registry);
        let record = two_pop_record();
        repo.put_job(&super::super::jobs::job_for(&record, &record.pops[0], None, 1)).await.unwrap();
        full.submit(&record).await.unwrap();
        assert!(repo.get_job("b", &record.id).await.unwrap().is_some(), "the retry wrote b's job");
        assert!(full.handed_over.marks.lock().unwrap().by_job.is_empty(), "no mark left for a");
        assert!(rx.try_recv().is_err(), "nothing handed over");
    }

    /// Returns once the forwarder's watch is running and nothing is left to arrive: a job
    /// written after the first one arrived came through the watch. (The first may arrive
    /// twice: from the catch-up, then from the watch, which starts at the revision read
    /// before the catch-up.)
    async fn watching(repo: &Repo, rx: &mut Received) {
        let [first, second] = [one_pop_record(), one_pop_record()];
        repo.put_job(&super::super::jobs::job_for(&first, &first.pops[0], None, u64::MAX)).await.unwrap();
        let start = next(rx).await;
        assert!(matches!(start, pb::coordinator_message::Msg::StartCapture(s) if s.capture_id == first.id));
        repo.put_job(&super::super::jobs::job_for(&second, &second.pops[0], None, u64::MAX)).await.unwrap();
        loop {
            match next(rx).await {
                pb::coordinator_message::Msg::StartCapture(s) if s.capture_id == second.id => return,
                pb::coordinator_message::Msg::StartCapture(s) if s.capture_id == first.id => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn one_pop_record() -> CaptureRecord {
        let request = CaptureRequest { colo_name: Some("ord".into()), ..CaptureRequest::for_test(CaptureType::Full) };
        let mut record = CaptureRecord::from_request("acct", request, time::OffsetDateTime::now_utc());
        record.pops = vec![PopResult::new("ord01", "a", PopStatus::Pending)];
        record
    }

    /// Agent `a`'s PoP and one of an agent not connected here.
    fn two_pop_record() -> CaptureRecord {
        let mut record = one_pop_record();
        record.pops.push(PopResult::new("ord02", "b", PopStatus::Pending));
        record
    }

    /// A replica over a store that injects faults, agent `a` connected to it on a queue of
    /// `queue` messages, and its forwarder running with its watch.
    struct Forwarding {
        faulty: Arc<crate::store::interloper::Interloper>,
        repo: Repo,
        registry: Arc<Registry>,
        full: Arc<FullCaptures>,
        rx: Received,
        cancel: CancellationToken,
        forwarder: tokio::task::JoinHandle<()>,
    }

    impl Forwarding {
        async fn start(queue: usize) -> Self {
            let faulty = crate::store::interloper::Interloper::over(&memory_repo().await);
            let repo = Repo::new(faulty.clone());
            let registry = Arc::new(Registry::default());
            let full = Arc::new(replica(&repo, &registry));
            let (tx, mut rx) = mpsc::channel(queue);
            registry.register(agent("a"), tx);
            let (cancel, forwarder) = run_forwarder(&full);
            watching(&repo, &mut rx).await;
            Self { faulty, repo, registry, full, rx, cancel, forwarder }
        }

        async fn stop(self) {
            self.cancel.cancel();
            self.forwarder.await.unwrap();
        }
    }

    /// The jobs' transaction commits but its answer is lost (an etcd timeout, a lost
    /// connection): the watch meets the job first and skips it (marked), the submit fails,
    /// and the agent still gets its start, once, from the forwarder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_whose_write_answered_an_error_after_committing_still_reaches_its_agent() {
        let mut f = Forwarding::start(64).await;
        let record = one_pop_record();
        f.faulty.answer_lost_next.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(f.full.submit(&record).await.is_err(), "the lost answer is an error");
        assert!(f.repo.get_job("a", &record.id).await.unwrap().is_some(), "the job was written");
        assert!(
            matches!(next(&mut f.rx).await, pb::coordinator_message::Msg::StartCapture(s) if s.capture_id == record.id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(f.rx.try_recv().is_err(), "sent once");
        f.stop().await;
    }

    /// An agent whose stream's queue is full when its job is written, and the watch met the
    /// job before the write's answer came: the submit does not wait for room (the POST would),
    /// and the job reaches the agent once the queue has room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_for_an_agent_with_a_full_queue_reaches_it_later() {
        let mut f = Forwarding::start(1).await;
        assert!(f.registry.try_send("a", convert::stop_message("filler")), "the queue is now full");
        let record = one_pop_record();
        f.faulty.answer_late_next.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), f.full.submit(&record)).await.expect("no wait").unwrap();
        assert!(
            matches!(next(&mut f.rx).await, pb::coordinator_message::Msg::StopCapture(s) if s.capture_id == "filler")
        );
        assert!(
            matches!(next(&mut f.rx).await, pb::coordinator_message::Msg::StartCapture(s) if s.capture_id == record.id)
        );
        f.stop().await;
    }
}
