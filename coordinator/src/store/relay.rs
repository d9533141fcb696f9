//! Keys of sample queries relayed to agents on other replicas (see `sample/relay.rs`).

use edgecap_state::{LeaseId, Revision, WatchStream};

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

    /// Watches the answer chunks of one relayed query from `revision`.
    pub(crate) async fn watch_sample_answers(
        &self,
        request: &str,
        agent: &str,
        revision: Revision,
    ) -> Result<WatchStream> {
        Ok(self.store().watch(&keys::sample_answers(request, agent), revision).await?)
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
