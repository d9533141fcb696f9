//! Keys of sample queries relayed to agents on other replicas (see `sample/relay.rs`).

use edgecap_state::LeaseId;

use super::repo::{Repo, Result, keys};

impl Repo {
    /// The prefix every relayed query lives under (watched by every replica).
    pub(crate) fn sample_jobs_prefix(&self) -> String {
        keys::sample_jobs()
    }

    /// The agent a relayed query's key is for.
    pub(crate) fn sample_job_agent(&self, key: &str) -> Option<String> {
        key.strip_prefix(&keys::sample_jobs()).and_then(|rest| rest.split('/').next()).map(str::to_string)
    }

    pub(crate) async fn put_sample_job(
        &self,
        agent: &str,
        request: &str,
        query: Vec<u8>,
        lease: LeaseId,
    ) -> Result<()> {
        self.store().put(&keys::sample_job(agent, request), query, Some(lease)).await?;
        Ok(())
    }

    /// The prefix every batch of relayed queries lives under (watched by every replica).
    pub(crate) fn sample_batches_prefix(&self) -> String {
        keys::sample_batches()
    }

    /// A query for several agents; `request` is `{instance}/{id}`.
    pub(crate) async fn put_sample_batch(&self, request: &str, batch: Vec<u8>, lease: LeaseId) -> Result<()> {
        self.store().put(&keys::sample_batch(request), batch, Some(lease)).await?;
        Ok(())
    }

    /// The `n`th key of answers a replica (`answerer`, its instance) packed for a batch.
    pub(crate) async fn put_sample_batch_answer(
        &self,
        request: &str,
        answerer: &str,
        n: usize,
        packed: Vec<u8>,
        lease: LeaseId,
    ) -> Result<()> {
        self.store().put(&keys::sample_answer(request, &format!("batch-{answerer}"), n), packed, Some(lease)).await?;
        Ok(())
    }

    /// The prefix of the answers to the queries of one replica process (its request ids are
    /// `{instance}/{id}`).
    pub(crate) fn sample_answers_prefix(&self, instance: &str) -> String {
        keys::sample_answers_of(instance)
    }

    /// The agent an answer chunk's key is for (`…/{request}/{agent}/{n}`).
    pub(crate) fn sample_answer_agent(&self, key: &str) -> Option<String> {
        let mut parts = key.rsplit('/');
        parts.next()?;
        parts.next().map(str::to_string)
    }

    /// The chunk number of an answer key.
    pub(crate) fn sample_answer_seq(&self, key: &str) -> u32 {
        key.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    pub(crate) async fn put_sample_answer(
        &self,
        request: &str,
        agent: &str,
        n: usize,
        chunk: Vec<u8>,
        lease: LeaseId,
    ) -> Result<()> {
        self.store().put(&keys::sample_answer(request, agent, n), chunk, Some(lease)).await?;
        Ok(())
    }
}
