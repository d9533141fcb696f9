//! Jobs: what each agent must do for a capture, written once and forwarded by whichever
//! replica the agent is connected to; and the agents' progress reports folded into their
//! PoP's state.

use std::sync::Arc;

use edgecap_proto::agent::v1 as pb;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio_util::sync::CancellationToken;

use super::{FullCaptures, START_DEADLINE};
use crate::convert;
use crate::model::{CaptureRecord, JobRecord, PopResult};

/// State-store writes in flight at once while a capture's jobs are written.
const WRITES_AT_ONCE: usize = 32;

/// A full capture as the API shows it. While unfinished, its PoPs are read from their own
/// keys, which the agents' reports update as they come (the record's copy is the leader's,
/// rolled up every 500 ms: a PoP had shown `running` up to a second after it was). Its
/// delivered shards, which live in their own keys, are attached.
pub(crate) async fn current_view(repo: &crate::store::Repo, record: &mut CaptureRecord) -> crate::store::Result<()> {
    if !record.status.is_final() {
        record.view_pops(repo.list_pops(&record.id).await?);
    }
    let shards = repo.list_shards(&record.id).await?;
    record.attach_shards(&shards);
    Ok(())
}

impl FullCaptures {
    /// Writes the jobs of a capture just created (its record exists). The PoPs' own keys are
    /// written by their first reports: until then the record's copy (pending) stands for
    /// each, and a start writes half the keys it did (the states had been written with the
    /// jobs, 600 keys for 300 PoPs, and the last agent's job waited for all of them).
    pub(super) async fn submit(&self, record: &CaptureRecord) -> crate::store::Result<()> {
        let not_after_ns = edgecap_common::now_ns() + START_DEADLINE.as_nanos() as u64;
        // The limits are shared by the PoPs that capture: each starts with a portion.
        let capturing: Vec<String> = record.pops.iter().filter(|p| !p.is_final()).map(|p| p.agent_id.clone()).collect();
        let budget = if record.shared_budget { crate::model::Budget::new(record, &capturing) } else { None };
        if let Some(budget) = &budget {
            self.repo.put_budget(&record.id, budget).await?;
        }
        // While a replica of an older version may read the capture (a rolling upgrade), each
        // PoP's key is written with its job, as that version expects.
        let with_keys = !self.repo.replicas_all_have(crate::store::POP_KEYS_BY_REPORT).await?;
        // The jobs in the fewest transactions etcd takes, a few at once: etcd's rate of
        // requests, not their size, is what takes time (one request per job had cost 300
        // writes; transactions of 32, ten for 300 PoPs, ~17 ms).
        // (The futures are made first: a closure in the stream trips the Send check of the
        // handler that awaits this.)
        let groups: Vec<_> = crate::store::txn_chunks(&record.pops, if with_keys { 2 } else { 1 })
            .map(|pops| self.submit_group(record, pops, budget.as_ref(), not_after_ns, with_keys))
            .collect();
        futures::stream::iter(groups).buffer_unordered(4).try_collect::<Vec<()>>().await?;
        Ok(())
    }

    async fn submit_group(
        &self,
        record: &CaptureRecord,
        pops: &[PopResult],
        budget: Option<&crate::model::Budget>,
        not_after_ns: u64,
        with_keys: bool,
    ) -> crate::store::Result<()> {
        // A group over the store's request size is halved until it fits (jobs carry the
        // account's scope, which can be large); one with a job already written (a retried
        // submit) goes PoP by PoP, keeping what is there.
        let mut parts = vec![pops];
        let mut one_by_one: Vec<&PopResult> = Vec::new();
        while let Some(part) = parts.pop() {
            // A skipped PoP (its agent offline) has no job: the record holds its final state.
            let jobs: Vec<JobRecord> =
                part.iter().filter(|p| !p.is_final()).map(|p| job_for(record, p, budget, not_after_ns)).collect();
            // Those of this replica's agents are handed over as soon as the write commits.
            let here = self.mark_for_handover(&jobs);
            let written = match (with_keys, jobs.is_empty()) {
                (true, _) => self.repo.create_pops_with_jobs(&record.id, part, &jobs).await,
                (false, true) => Ok(true),
                (false, false) => self.repo.create_jobs(&jobs).await,
            };
            self.hand_over(&here, matches!(written, Ok(true)));
            match written {
                Ok(true) => {}
                Err(crate::store::RepoError::State(edgecap_state::StateError::TooLarge { .. })) if part.len() > 1 => {
                    let (a, b) = part.split_at(part.len() / 2);
                    parts.extend([a, b]);
                }
                Ok(false) | Err(crate::store::RepoError::State(edgecap_state::StateError::TooLarge { .. })) => {
                    one_by_one.extend(part);
                }
                Err(e) => return Err(e),
            }
        }
        let writes: Vec<_> =
            one_by_one.into_iter().map(|pop| self.submit_pop(record, pop, budget, not_after_ns, with_keys)).collect();
        futures::stream::iter(writes).buffer_unordered(WRITES_AT_ONCE).try_collect::<Vec<()>>().await?;
        Ok(())
    }

    /// Writes one PoP's job unless it exists, and (`with_keys`) its initial state unless it
    /// exists.
    async fn submit_pop(
        &self,
        record: &CaptureRecord,
        pop: &PopResult,
        budget: Option<&crate::model::Budget>,
        not_after_ns: u64,
        with_keys: bool,
    ) -> crate::store::Result<()> {
        if with_keys {
            self.repo.cas_pop(&record.id, &pop.agent_id, None, pop).await?;
        }
        if !pop.is_final() {
            self.repo.create_job(&job_for(record, pop, budget, not_after_ns)).await?;
        }
        Ok(())
    }
}

/// The job of one PoP of a new capture.
pub(super) fn job_for(
    record: &CaptureRecord,
    pop: &PopResult,
    budget: Option<&crate::model::Budget>,
    not_after_ns: u64,
) -> JobRecord {
    JobRecord {
        capture_id: record.id.clone(),
        account_id: record.account_id.clone(),
        agent_id: pop.agent_id.clone(),
        pop: pop.pop.clone(),
        destination_conf: record.destination_conf.clone().unwrap_or_default(),
        filter_v1: record.filter_v1.clone(),
        filter_bpf: record.filter_bpf.clone(),
        filter_bpf_hash: record.filter_bpf_hash.clone(),
        time_limit: record.time_limit,
        packet_limit: record.packet_limit,
        byte_limit: record.byte_limit,
        first_allowance: budget.map(|b| b.allowance(&pop.agent_id)),
        not_after_ns,
        stop: false,
        scope: Some(record.capture_scope()),
        traceparent: record.traceparent.clone(),
    }
}

impl FullCaptures {
    /// Marks every job of a capture stopped; the replicas forward the stop to their agents.
    pub(crate) async fn request_stop(&self, record: &CaptureRecord) -> crate::store::Result<()> {
        // Many PoPs at once, as when the jobs were written.
        let stops: Vec<_> = record.pops.iter().map(|pop| self.stop_job(&pop.agent_id, &record.id)).collect();
        futures::stream::iter(stops).buffer_unordered(WRITES_AT_ONCE).try_collect::<Vec<()>>().await?;
        Ok(())
    }

    async fn stop_job(&self, agent_id: &str, capture_id: &str) -> crate::store::Result<()> {
        if let Some(mut job) = self.repo.get_job(agent_id, capture_id).await?
            && !job.stop
        {
            job.stop = true;
            self.repo.put_job(&job).await?;
        }
        Ok(())
    }

    /// Sends a job (and its stop, if asked) to its agent, if that agent is connected here.
    ///
    /// `new`: the job was just created (its key's first version), so its PoP cannot be final
    /// yet: it is sent without reading the PoP. Jobs are forwarded one after another from the
    /// watch, and that read, one per PoP, had been most of the time from a capture's creation
    /// to its PoPs running (300 PoPs: ~1 s).
    pub(super) async fn forward(&self, job: &JobRecord, new: bool) {
        if !self.registry.is_connected(&job.agent_id) {
            return;
        }
        // Only jobs whose PoP is still open are sent (a finished PoP is never restarted). A
        // PoP without a key has not reported yet: pending.
        if !new {
            match self.repo.get_pop(&job.capture_id, &job.agent_id).await {
                Ok(None) => {}
                Ok(Some((pop, _))) if !pop.is_final() => {}
                _ => return,
            }
        }
        self.registry.send(&job.agent_id, convert::start_message(job)).await;
        super::handover::timeline_sent(job);
        if job.stop {
            self.registry.send(&job.agent_id, convert::stop_message(&job.capture_id)).await;
        }
    }

    /// Sends an agent that just connected the jobs it must run (idempotent at the agent).
    pub(crate) async fn on_agent_connected(&self, agent_id: &str) {
        match self.repo.jobs_for_agent(agent_id).await {
            Ok(jobs) => {
                for job in jobs {
                    self.forward(&job, false).await;
                }
            }
            Err(error) => tracing::warn!(%agent_id, %error, "could not read the agent's jobs"),
        }
    }

    /// Forwards job changes to the agents connected here, driven by a watch on the jobs,
    /// until `cancel`.
    pub(crate) async fn forward_jobs(self: Arc<Self>, cancel: CancellationToken) {
        // Jobs written before the watch (re)starts are covered by sending every connected
        // agent its jobs.
        let this: &Self = &self;
        let catch_up = move || async move {
            for agent in this.registry.agents() {
                this.on_agent_connected(&agent.agent_id).await;
            }
        };
        let on_put = move |kv: edgecap_state::KeyValue| async move {
            match crate::store::decode::<JobRecord>(&kv.key, &kv.value) {
                // A job's first version handed over here already is not sent again.
                Ok(job) if kv.create_revision == kv.mod_revision && this.handed_over.take(&job) => {}
                Ok(job) => this.forward(&job, kv.create_revision == kv.mod_revision).await,
                Err(error) => tracing::warn!(%error, "undecodable job skipped"),
            }
        };
        // Beside the watch: the jobs it passed by that were not handed over after all.
        let prefix = self.repo.jobs_prefix();
        tokio::join!(self.repo.follow_puts(&prefix, "job", &cancel, catch_up, on_put), self.send_passed_jobs(&cancel));
    }

    /// A progress report from an agent, queued to be folded into its PoP's state
    /// (`progress.rs`; ignored unless the agent is part of the capture).
    pub(crate) fn report(&self, agent_id: &str, report: pb::CaptureReport) {
        self.progress.push(agent_id, report);
    }

    /// Writes the agents' reports into their PoPs' keys (see `progress.rs`) and delivered
    /// shards' records (`store/batch.rs`) in batches, until `cancel`.
    pub(crate) async fn write_progress(self: Arc<Self>, cancel: CancellationToken) {
        tokio::join!(
            self.progress.run(self.repo.clone(), cancel.clone()),
            self.shard_records.run(self.repo.clone(), cancel)
        );
    }

    /// Writes every queued report now (the status benchmark's report path).
    pub(crate) async fn flush_progress(&self) {
        self.progress.flush(&self.repo, true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CaptureRequest, CaptureStatus, CaptureType, PopStatus};
    use crate::store::Repo;

    #[tokio::test]
    async fn the_api_sees_a_pop_running_before_the_leader_rolls_it_up() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let request = CaptureRequest { colo_name: Some("ord".into()), ..CaptureRequest::for_test(CaptureType::Full) };
        let mut record = CaptureRecord::from_request("acct", request, time::OffsetDateTime::now_utc());
        record.pops = vec![
            PopResult::new("ord02", "b", PopStatus::Pending),
            PopResult::new("ord01", "a", PopStatus::Pending),
            PopResult::new("ord03", "c", PopStatus::Skipped),
        ];
        repo.create_capture(&record).await.unwrap();
        let mut view = repo.get_capture("acct", &record.id).await.unwrap().unwrap();
        current_view(&repo, &mut view).await.unwrap();
        assert_eq!(view.status, CaptureStatus::Pending, "no PoP keys yet: the record as written");
        assert_eq!(view.pops.len(), 3);

        // One agent's first report wrote its PoP's key; the others have none yet, and the
        // record's copy stands for them.
        repo.cas_pop(&record.id, "a", None, &PopResult::new("ord01", "a", PopStatus::Running)).await.unwrap();
        let mut view = repo.get_capture("acct", &record.id).await.unwrap().unwrap();
        current_view(&repo, &mut view).await.unwrap();
        assert_eq!(view.status, CaptureStatus::Running);
        let pops: Vec<_> = view.pops.iter().map(|p| (p.pop.as_str(), p.status)).collect();
        assert_eq!(
            pops,
            [("ord01", PopStatus::Running), ("ord02", PopStatus::Pending), ("ord03", PopStatus::Skipped)],
            "sorted by PoP"
        );

        // A finished capture is shown as the leader wrote it.
        repo.update_capture("acct", &record.id, |r| r.status = CaptureStatus::Failed).await.unwrap();
        let mut view = repo.get_capture("acct", &record.id).await.unwrap().unwrap();
        current_view(&repo, &mut view).await.unwrap();
        assert_eq!(view.status, CaptureStatus::Failed);
        assert!(view.pops.iter().all(|p| p.status != PopStatus::Running), "the record's copies: {:?}", view.pops);
    }

    /// A submit retried after part of it was written (its replica failed, or the transaction's
    /// answer was lost): the group goes job by job, keeps what is there, and adds the rest. No
    /// PoP key is written: a PoP's first report writes it.
    #[tokio::test]
    async fn a_retried_submit_keeps_what_was_written_and_adds_the_rest() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let full = FullCaptures::for_test(repo.clone(), Default::default());
        let request = CaptureRequest { colo_name: Some("ord".into()), ..CaptureRequest::for_test(CaptureType::Full) };
        let mut record = CaptureRecord::from_request("acct", request, time::OffsetDateTime::now_utc());
        record.pops = vec![
            PopResult::new("ord01", "a", PopStatus::Pending),
            PopResult::new("ord02", "b", PopStatus::Pending),
            PopResult::new("ord03", "c", PopStatus::Skipped),
        ];
        // The first attempt got as far as a's job, and a stop was asked for since.
        let mut a = job_for(&record, &record.pops[0], None, 1);
        a.stop = true;
        repo.put_job(&a).await.unwrap();
        full.submit(&record).await.unwrap();
        assert!(repo.get_job("a", &record.id).await.unwrap().unwrap().stop, "a's job kept as it was");
        assert!(!repo.get_job("b", &record.id).await.unwrap().unwrap().stop);
        assert!(repo.get_job("c", &record.id).await.unwrap().is_none(), "no job for an offline agent");
        for agent in ["a", "b", "c"] {
            assert!(repo.get_pop(&record.id, agent).await.unwrap().is_none(), "{agent}: no PoP key");
        }
        assert_eq!(repo.agents_with_jobs(&record.id).await.unwrap(), ["a", "b"].map(String::from).into());
        // Submitted again, nothing changes.
        full.submit(&record).await.unwrap();
        assert!(repo.get_job("a", &record.id).await.unwrap().unwrap().stop);
    }

    fn pending_record(pops: usize) -> CaptureRecord {
        let request = CaptureRequest { colo_name: Some("ord".into()), ..CaptureRequest::for_test(CaptureType::Full) };
        let mut record = CaptureRecord::from_request("acct", request, time::OffsetDateTime::now_utc());
        record.pops =
            (0..pops).map(|i| PopResult::new(&format!("ord{i:02}"), &format!("a{i:02}"), PopStatus::Pending)).collect();
        record
    }

    /// During a rolling upgrade, a replica of an older version (its `replicas/` key announces
    /// no features) takes a PoP without a key for no PoP: the keys are written with the jobs
    /// until every live replica reads a missing key as pending.
    #[tokio::test]
    async fn pop_keys_are_written_with_the_jobs_while_an_older_replica_is_up() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let full = FullCaptures::for_test(repo.clone(), Default::default());
        let lease = repo.store().grant_lease(std::time::Duration::from_secs(60)).await.unwrap();
        repo.put_replica("new", lease).await.unwrap();
        repo.put_replica("old", lease).await.unwrap();
        let keys = repo.store().list_keys("").await.unwrap();
        let old = keys.iter().find(|k| k.ends_with("/replicas/old")).expect("the replica's key");
        repo.store().put(old, br#"{"since":"2026-11-01T00:00:00Z"}"#.to_vec(), Some(lease)).await.unwrap();
        let mut record = pending_record(3);
        record.pops[2].status = PopStatus::Skipped;
        full.submit(&record).await.unwrap();
        let status = |id: String, agent: &'static str| {
            let repo = repo.clone();
            async move { repo.get_pop(&id, agent).await.unwrap().map(|(p, _)| p.status) }
        };
        assert_eq!(status(record.id.clone(), "a00").await, Some(PopStatus::Pending));
        assert_eq!(status(record.id.clone(), "a02").await, Some(PopStatus::Skipped));
        assert!(repo.get_job("a01", &record.id).await.unwrap().is_some());

        // A replica key that does not decode counts as an older replica's.
        repo.store().put(old, b"not json".to_vec(), Some(lease)).await.unwrap();
        let garbled = pending_record(1);
        full.submit(&garbled).await.unwrap();
        assert_eq!(status(garbled.id.clone(), "a00").await, Some(PopStatus::Pending));

        // The older replica is gone: jobs alone.
        repo.store().delete(old).await.unwrap();
        let record = pending_record(2);
        full.submit(&record).await.unwrap();
        assert_eq!(status(record.id.clone(), "a00").await, None, "no PoP key");
        assert!(repo.get_job("a00", &record.id).await.unwrap().is_some());
    }

    /// Jobs carry the account's scope, which can be large: a transaction over the store's
    /// request size is halved until it fits, and every job is written once.
    #[tokio::test]
    async fn a_group_of_jobs_over_the_request_size_is_halved_until_it_fits() {
        let store = std::sync::Arc::new(edgecap_state::embedded::EmbeddedStore::in_memory_with_limit(8 << 10));
        let repo = Repo::new(store);
        let full = FullCaptures::for_test(repo.clone(), Default::default());
        let mut record = pending_record(8);
        let prefixes = (0..150).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
        record.scope = Some(crate::model::CaptureScope { unrestricted: false, prefixes, pops: vec!["ord".into()] });
        let one = serde_json::to_vec(&job_for(&record, &record.pops[0], None, 1)).unwrap().len();
        assert!((2 << 10..4 << 10).contains(&one), "a job of {one} bytes: two fit in a transaction, eight do not");
        let before = repo.store().revision().await.unwrap();
        full.submit(&record).await.unwrap();
        for pop in &record.pops {
            assert!(repo.get_job(&pop.agent_id, &record.id).await.unwrap().is_some(), "{}", pop.agent_id);
        }
        // (The embedded store gives each key of a transaction its own revision.)
        assert_eq!(repo.store().revision().await.unwrap() - before, 8, "each job written once");
    }
}
