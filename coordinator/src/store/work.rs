//! Working keys of running full captures (jobs, shards; per-PoP progress is in `pops.rs`),
//! the leader key, and agent presence. Keys come from [`super::repo::keys`].

use edgecap_state::{LeaseId, Revision};

use serde::{Deserialize, Serialize};

use super::repo::{Repo, Result, decode, encode, keys};
use crate::model::{CaptureRecord, JobRecord, PopResult, ShardRef};

/// A replica that announces this reads a PoP without a key as pending (its capture record's
/// copy) and creates the key with the PoP's first report; until every live replica does, a
/// start also writes each PoP's key with its job (a rolling upgrade from a version before it).
pub(crate) const POP_KEYS_BY_REPORT: &str = "pop-keys-by-report";
/// What this replica announces (in its `replicas/{name}` key).
const FEATURES: &[&str] = &[POP_KEYS_BY_REPORT];

/// A place among an account's active full captures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    id: String,
    reserved_ns: u64,
}

/// A reservation whose capture record does not exist this long after is abandoned (its
/// replica failed between the reservation and the record).
const RESERVATION_GRACE_NS: u64 = 60_000_000_000;

/// What the coordinator knows of a connected agent, for other replicas and operators.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AgentPresence {
    pub agent_id: String,
    pub pop: String,
    pub interfaces: Vec<String>,
    pub version: String,
    pub coordinator: String,
    pub connected_at: String,
    /// The agent's lookback sampling (1 in N).
    #[serde(default)]
    pub sample_rate: u32,
    /// Written by a replica that announces itself under `replicas/`: once that key is gone
    /// (the replica died), the presence is ignored before its own lease runs out.
    #[serde(default)]
    pub announced: bool,
    /// Written by a replica that answers relayed queries in batches (`sample/batch.rs`);
    /// older replicas are asked one query per agent.
    #[serde(default)]
    pub relay_batches: bool,
}

/// Keys deleted in one transaction: etcd's limit of operations in one.
const DELETES_PER_WRITE: usize = 128;

impl Repo {
    /// Takes a place for full capture `id` among the account's active ones if fewer than
    /// `max` are active; `Ok(Err(active))` when they are all taken. Compare-and-swap, so two
    /// requests (on any replicas) cannot both take the last place. Places of captures that
    /// finished, or whose record never appeared, are freed on the way.
    pub(crate) async fn reserve_active_full(
        &self,
        account: &str,
        id: &str,
        max: usize,
    ) -> Result<std::result::Result<(), usize>> {
        let key = keys::active_full(account);
        loop {
            let current = self.store().get(&key).await?;
            let (mut places, revision): (Vec<Reservation>, _) = match &current {
                Some(kv) => (decode(&key, &kv.value)?, Some(kv.mod_revision)),
                None => (Vec::new(), None),
            };
            let now = edgecap_common::now_ns();
            let mut kept = Vec::new();
            for place in places.drain(..) {
                let active = match self.get_json::<CaptureRecord>(&keys::capture(account, &place.id)).await? {
                    Some(record) => !record.status.is_final(),
                    None => now.saturating_sub(place.reserved_ns) < RESERVATION_GRACE_NS,
                };
                if active {
                    kept.push(place);
                }
            }
            if kept.len() >= max {
                return Ok(Err(kept.len()));
            }
            kept.push(Reservation { id: id.to_string(), reserved_ns: now });
            if self.store().compare_and_put(&key, revision, encode(&kept), None).await?.is_some() {
                return Ok(Ok(()));
            }
        }
    }

    /// Gives back a place taken for a capture that was not started after all.
    pub(crate) async fn release_active_full(&self, account: &str, id: &str) -> Result<()> {
        let key = keys::active_full(account);
        loop {
            let Some(kv) = self.store().get(&key).await? else { return Ok(()) };
            let mut places: Vec<Reservation> = decode(&key, &kv.value)?;
            places.retain(|p| p.id != id);
            if self.store().compare_and_put(&key, Some(kv.mod_revision), encode(&places), None).await?.is_some() {
                return Ok(());
            }
        }
    }

    /// Publishes an agent's presence on `lease`; returns the key's revision.
    pub(crate) async fn put_presence(&self, presence: &AgentPresence, lease: LeaseId) -> Result<Revision> {
        Ok(self.store().put(&keys::agent(&presence.agent_id), encode(presence), Some(lease)).await?)
    }

    /// Publishes an agent's presence on `lease` only where no replica has (`None` then).
    pub(crate) async fn create_presence(&self, presence: &AgentPresence, lease: LeaseId) -> Result<Option<Revision>> {
        Ok(self.store().compare_and_put(&keys::agent(&presence.agent_id), None, encode(presence), Some(lease)).await?)
    }

    /// Every presence key: agent id -> (its lease, its revision).
    pub(crate) async fn presence_keys(&self) -> Result<std::collections::HashMap<String, (Option<LeaseId>, Revision)>> {
        let prefix = keys::agents();
        Ok(self
            .store()
            .list(&prefix)
            .await?
            .into_iter()
            .map(|kv| (kv.key[prefix.len()..].to_string(), (kv.lease, kv.mod_revision)))
            .collect())
    }

    /// Deletes an agent's presence if it is still as written at `revision`.
    pub(crate) async fn delete_presence(&self, agent_id: &str, revision: Revision) -> Result<bool> {
        Ok(self.store().compare_and_delete(&keys::agent(agent_id), revision).await?)
    }

    /// Remembers an agent as known (not leased), so a capture can name the PoPs that are
    /// offline.
    pub(crate) async fn remember_agent(&self, presence: &AgentPresence) -> Result<()> {
        self.store().put(&keys::known_agent(&presence.agent_id), encode(presence), None).await?;
        Ok(())
    }

    /// Agents connected to any replica now.
    /// The agents connected now: their presence keys, less those whose replica is gone (its
    /// short-leased `replicas/` key lapsed: the agent has not reconnected elsewhere yet).
    pub(crate) async fn list_agents(&self) -> Result<Vec<AgentPresence>> {
        let mut agents: Vec<AgentPresence> = self.list_json(&keys::agents()).await?;
        if agents.iter().any(|a| a.announced) {
            let prefix = keys::replicas();
            let live: std::collections::HashSet<String> =
                self.store().list(&prefix).await?.into_iter().map(|kv| kv.key[prefix.len()..].to_string()).collect();
            agents.retain(|a| !a.announced || live.contains(&a.coordinator));
        }
        Ok(agents)
    }

    /// Announces a live replica on `lease` (short: its death is noticed within it), with what
    /// it can do ([`FEATURES`]).
    pub(crate) async fn put_replica(&self, name: &str, lease: LeaseId) -> Result<()> {
        let since = serde_json::json!({
            "since": crate::model::rfc3339(time::OffsetDateTime::now_utc()),
            "features": FEATURES,
        });
        self.store().put(&keys::replica(name), encode(&since), Some(lease)).await?;
        Ok(())
    }

    /// Whether every live replica announces `feature` (one of an older version announces
    /// none); true when none is announced.
    pub(crate) async fn replicas_all_have(&self, feature: &str) -> Result<bool> {
        #[derive(Deserialize)]
        struct Announced {
            #[serde(default)]
            features: Vec<String>,
        }
        let replicas = self.store().list(&keys::replicas()).await?;
        Ok(replicas.iter().all(|kv| {
            serde_json::from_slice::<Announced>(&kv.value).is_ok_and(|a| a.features.iter().any(|f| f == feature))
        }))
    }

    /// Every agent ever connected (its last presence), online or not.
    pub(crate) async fn list_known_agents(&self) -> Result<Vec<AgentPresence>> {
        self.list_json(&keys::known_agents()).await
    }

    /// The leader key, for [`crate::full`]'s election.
    pub(crate) fn leader_key(&self) -> String {
        keys::leader()
    }

    /// The prefix every job lives under (watched by every replica).
    pub(crate) fn jobs_prefix(&self) -> String {
        keys::jobs()
    }

    /// Writes the initial states of a new capture's `pops` and its `jobs` in one transaction,
    /// if none of those PoPs was written before (`Ok(false)`: one was, nothing is written):
    /// what a start writes while a replica of an older version, which takes a PoP without a
    /// key for no PoP, may read the capture (see [`POP_KEYS_BY_REPORT`]).
    pub(crate) async fn create_pops_with_jobs(
        &self,
        capture: &str,
        pops: &[PopResult],
        jobs: &[JobRecord],
    ) -> Result<bool> {
        let absent: Vec<String> = pops.iter().map(|p| keys::pop(capture, &p.agent_id)).collect();
        let mut puts: Vec<(String, Vec<u8>)> = absent.iter().cloned().zip(pops.iter().map(encode)).collect();
        puts.extend(jobs.iter().map(|j| (keys::job(&j.agent_id, &j.capture_id), encode(j))));
        Ok(self.store().put_all_if_absent(&absent, puts).await?)
    }

    /// Writes a new capture's `jobs` in one transaction, if none of them was written before
    /// (`Ok(false)`: one was, nothing is written). A PoP's own key is written by its first
    /// report; until then the capture record's copy (pending) stands for it.
    pub(crate) async fn create_jobs(&self, jobs: &[JobRecord]) -> Result<bool> {
        let puts: Vec<(String, Vec<u8>)> =
            jobs.iter().map(|j| (keys::job(&j.agent_id, &j.capture_id), encode(j))).collect();
        let absent: Vec<String> = puts.iter().map(|(k, _)| k.clone()).collect();
        Ok(self.store().put_all_if_absent(&absent, puts).await?)
    }

    /// Writes a job unless its key exists (`false`): a job once written is changed only by a
    /// stop.
    pub(crate) async fn create_job(&self, job: &JobRecord) -> Result<bool> {
        let key = keys::job(&job.agent_id, &job.capture_id);
        Ok(self.store().compare_and_put(&key, None, encode(job), None).await?.is_some())
    }

    /// The agents that have a job for `capture`, from one read of the jobs' names.
    pub(crate) async fn agents_with_jobs(&self, capture: &str) -> Result<std::collections::HashSet<String>> {
        Ok(self.job_names().await?.into_iter().filter(|(_, id)| id == capture).map(|(agent, _)| agent).collect())
    }

    pub(crate) async fn put_job(&self, job: &JobRecord) -> Result<()> {
        self.store().put(&keys::job(&job.agent_id, &job.capture_id), encode(job), None).await?;
        Ok(())
    }

    pub(crate) async fn get_job(&self, agent: &str, capture: &str) -> Result<Option<JobRecord>> {
        self.get_json(&keys::job(agent, capture)).await
    }

    /// How many jobs each agent has (running captures, and finished ones not cleaned up yet),
    /// from one read of the jobs' names: a capture over 300 PoPs had read each agent's jobs,
    /// 300 reads before it could answer.
    pub(crate) async fn jobs_per_agent(&self) -> Result<std::collections::HashMap<String, usize>> {
        let mut counts = std::collections::HashMap::new();
        for (agent, _) in self.job_names().await? {
            *counts.entry(agent).or_default() += 1;
        }
        Ok(counts)
    }

    /// Every job as (agent, capture), from one keys-only read.
    async fn job_names(&self) -> Result<Vec<(String, String)>> {
        let prefix = keys::jobs();
        let keys = self.store().list_keys(&prefix).await?;
        Ok(keys
            .iter()
            .filter_map(|key| key[prefix.len()..].split_once('/'))
            .map(|(agent, capture)| (agent.to_string(), capture.to_string()))
            .collect())
    }

    pub(crate) async fn jobs_for_agent(&self, agent: &str) -> Result<Vec<JobRecord>> {
        self.list_json(&keys::jobs_of(agent)).await
    }

    /// Records a delivered shard through `batch` (with other replicas' callers' shards in one
    /// transaction, see `batch.rs`); the error says why it was not written.
    pub(crate) async fn put_shard_batched(
        &self,
        batch: &super::PutBatch,
        capture: &str,
        agent: &str,
        name: &str,
        shard: &ShardRef,
    ) -> std::result::Result<(), String> {
        batch.put(self, keys::shard(capture, agent, name), encode(shard)).await
    }

    /// Delivered shards of a capture: (agent id, shard), in key order.
    pub(crate) async fn list_shards(&self, capture: &str) -> Result<Vec<(String, ShardRef)>> {
        let prefix = keys::shards_of(capture);
        let mut out = Vec::new();
        for kv in self.store().list(&prefix).await? {
            let agent = kv.key[prefix.len()..].split('/').next().unwrap_or("").to_string();
            out.push((agent, decode(&kv.key, &kv.value)?));
        }
        Ok(out)
    }

    /// Writes a capture's shared budget (before its jobs).
    pub(crate) async fn put_budget(&self, capture: &str, budget: &crate::model::Budget) -> Result<()> {
        self.store().put(&keys::budget(capture), encode(budget), None).await?;
        Ok(())
    }

    /// Changes a capture's budget with compare-and-swap (retried on conflict); `None` when
    /// the capture has none.
    pub(crate) async fn update_budget<T>(
        &self,
        capture: &str,
        mut change: impl FnMut(&mut crate::model::Budget) -> T,
    ) -> Result<Option<T>> {
        let key = keys::budget(capture);
        loop {
            let Some(kv) = self.store().get(&key).await? else { return Ok(None) };
            let mut budget: crate::model::Budget = decode(&key, &kv.value)?;
            let out = change(&mut budget);
            if self.store().compare_and_put(&key, Some(kv.mod_revision), encode(&budget), None).await?.is_some() {
                return Ok(Some(out));
            }
        }
    }

    /// Deletes `keys` in transactions of [`DELETES_PER_WRITE`], in order (so a key listed last
    /// is deleted only once those before it are). A capture over 300 PoPs had been cleaned up
    /// with 600 requests, each a write of its own in etcd.
    pub(super) async fn delete_keys(&self, keys: &[String]) -> Result<u64> {
        let mut deleted = 0;
        for chunk in keys.chunks(DELETES_PER_WRITE) {
            deleted += self.store().delete_all(chunk).await?;
        }
        Ok(deleted)
    }

    /// Removes a finished capture's working keys and takes it out of the active index. Its
    /// per-PoP results live on in the capture record, its shard list under `shards/` (until
    /// retention deletes the capture).
    pub(crate) async fn delete_capture_work(&self, capture: &str, agents: &[String]) -> Result<()> {
        let mut work = job_keys(capture, agents);
        // Out of the active index last: until then the leader still follows it.
        work.extend([keys::budget(capture), keys::active(capture)]);
        self.delete_keys(&work).await?;
        Ok(())
    }

    /// Removes a capture's jobs and PoP keys only (no grant is given for a capture without
    /// them); it stays in the active index, so a leader still follows it.
    pub(crate) async fn delete_capture_jobs(&self, capture: &str, agents: &[String]) -> Result<()> {
        self.delete_keys(&job_keys(capture, agents)).await.map(|_| ())
    }
}

/// Each agent's job and PoP keys of a capture, once each (an agent named twice, as it should
/// not be, must not make a transaction refused).
fn job_keys(capture: &str, agents: &[String]) -> Vec<String> {
    let mut work: Vec<String> =
        agents.iter().flat_map(|agent| [keys::job(agent, capture), keys::pop(capture, agent)]).collect();
    let mut seen = std::collections::HashSet::new();
    work.retain(|k| seen.insert(k.clone()));
    work
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_active_capture_limit_holds_for_concurrent_requests() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        // Twenty requests (on any replica: they share only the store) race for one place.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let repo = repo.clone();
            tasks.push(tokio::spawn(async move { repo.reserve_active_full("acct", &format!("c{i:02}"), 1).await }));
        }
        let mut won = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            if task.await.unwrap().unwrap().is_ok() {
                won.push(i);
            }
        }
        assert_eq!(won.len(), 1, "exactly one request takes the place: {won:?}");
        // A place given back (the capture did not start) can be taken again; the account's
        // other places are independent of other accounts'.
        repo.release_active_full("acct", &format!("c{:02}", won[0])).await.unwrap();
        assert!(repo.reserve_active_full("acct", "later", 1).await.unwrap().is_ok());
        assert!(repo.reserve_active_full("other", "x", 1).await.unwrap().is_ok());
        assert_eq!(repo.reserve_active_full("acct", "again", 1).await.unwrap(), Err(1));
    }
}
