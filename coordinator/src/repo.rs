//! The coordinator's key layout over the state store. Every key the coordinator writes is
//! built here, so the whole persisted schema is visible in one file (see `docs/state.md`).
//!
//! ```text
//! /edgecap/v1/tokens/{sha256(token)}        {"account_id"}          tokens are never stored in clear
//! /edgecap/v1/captures/{account}/{id}       CaptureRecord           account first: listing is one prefix read
//! /edgecap/v1/ownerships/{account}/{id}     OwnershipRecord
//! /edgecap/v1/agents/{agent_id}             AgentPresence (leased)  disappears when the agent's lease lapses
//! /edgecap/v1/known-agents/{agent_id}       AgentPresence           last presence of every agent ever seen (offline PoPs)
//! /edgecap/v1/jobs/{agent_id}/{capture_id}   JobRecord               what one agent must do; watched by every replica
//! /edgecap/v1/pops/{capture_id}/{agent_id}   PopResult               one PoP's progress, written by its agent's replica
//! /edgecap/v1/shards/{capture_id}/{agent_id}/{shard}  ShardRef      one delivered shard (idempotent by key)
//! /edgecap/v1/leader                        {"name", "since"} (leased)  the replica that runs captures to their end
//! ```

use std::sync::Arc;

use edgecap_state::{LeaseId, Revision, StateError, StateStore};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{CaptureRecord, JobRecord, OwnershipRecord, PopResult, ShardRef};

pub const PREFIX: &str = "/edgecap/v1";

#[derive(Clone, Debug)]
pub struct Repo {
    store: Arc<dyn StateStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("stored record {key} does not decode: {message}")]
    Decode { key: String, message: String },
    #[error("record {0} not found")]
    NotFound(String),
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    account_id: String,
}

/// What the coordinator knows of a connected agent, for other replicas and operators.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentPresence {
    pub agent_id: String,
    pub pop: String,
    pub interfaces: Vec<String>,
    pub version: String,
    pub coordinator: String,
    pub connected_at: String,
    /// The agent's lookback sampling (1 in N).
    #[serde(default)]
    pub sample_rate: u32,
}

pub fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    hex::encode(digest.as_ref())
}

fn capture_key(account: &str, id: &str) -> String {
    format!("{PREFIX}/captures/{account}/{id}")
}

pub fn job_key(agent: &str, capture: &str) -> String {
    format!("{PREFIX}/jobs/{agent}/{capture}")
}

pub const JOBS_PREFIX: &str = "/edgecap/v1/jobs/";
pub const LEADER_KEY: &str = "/edgecap/v1/leader";

fn pop_key(capture: &str, agent: &str) -> String {
    format!("{PREFIX}/pops/{capture}/{agent}")
}

fn ownership_key(account: &str, id: &str) -> String {
    format!("{PREFIX}/ownerships/{account}/{id}")
}

pub fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| RepoError::Decode { key: key.to_string(), message: e.to_string() })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl Repo {
    /// Calls `on_put` for every key put under `prefix` from now on, until `cancel`. Each time
    /// the watch (re)starts, `catch_up` runs first, so nothing written while it was down is
    /// missed; a broken watch (store restart, compaction) is restarted after a second.
    pub async fn follow_puts<C, CF, P, PF>(
        &self,
        prefix: &str,
        what: &str,
        cancel: &tokio_util::sync::CancellationToken,
        mut catch_up: C,
        mut on_put: P,
    ) where
        C: FnMut() -> CF,
        CF: std::future::Future<Output = ()>,
        P: FnMut(edgecap_state::KeyValue) -> PF,
        PF: std::future::Future<Output = ()>,
    {
        use futures::StreamExt as _;
        while !cancel.is_cancelled() {
            let result: std::result::Result<(), String> = async {
                let revision = self.store.revision().await.map_err(|e| e.to_string())?;
                catch_up().await;
                let mut events = self.store.watch(prefix, revision + 1).await.map_err(|e| e.to_string())?;
                loop {
                    let event = tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        e = events.next() => e,
                    };
                    match event {
                        Some(Ok(edgecap_state::WatchEvent::Put(kv))) => on_put(kv).await,
                        Some(Ok(edgecap_state::WatchEvent::Delete { .. })) => {}
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("watch ended".into()),
                    }
                }
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, "{what} watch interrupted; restarting it");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }

    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Binds `token` to `account` (idempotent; re-binding a token to another account moves it).
    pub async fn add_token(&self, account: &str, token: &str) -> Result<()> {
        let key = format!("{PREFIX}/tokens/{}", token_hash(token));
        self.store.put(&key, encode(&TokenRecord { account_id: account.to_string() }), None).await?;
        Ok(())
    }

    pub async fn account_for_token(&self, token: &str) -> Result<Option<String>> {
        let key = format!("{PREFIX}/tokens/{}", token_hash(token));
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode::<TokenRecord>(&key, &kv.value)?.account_id)),
            None => Ok(None),
        }
    }

    pub async fn create_capture(&self, record: &CaptureRecord) -> Result<Revision> {
        let key = capture_key(&record.account_id, &record.id);
        self.store
            .compare_and_put(&key, None, encode(record), None)
            .await?
            .ok_or_else(|| RepoError::Decode { key, message: "id collision".into() })
    }

    pub async fn get_capture(&self, account: &str, id: &str) -> Result<Option<CaptureRecord>> {
        let key = capture_key(account, id);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// One account's captures, newest first.
    pub async fn list_captures(&self, account: &str) -> Result<Vec<CaptureRecord>> {
        self.list_captures_under(&format!("{PREFIX}/captures/{account}/")).await
    }

    /// Every account's captures (for recovery after a restart).
    pub async fn list_all_captures(&self) -> Result<Vec<CaptureRecord>> {
        self.list_captures_under(&format!("{PREFIX}/captures/")).await
    }

    async fn list_captures_under(&self, prefix: &str) -> Result<Vec<CaptureRecord>> {
        let mut out = Vec::new();
        for kv in self.store.list(prefix).await? {
            match decode::<CaptureRecord>(&kv.key, &kv.value) {
                Ok(record) => out.push(record),
                // One damaged record must not hide the others.
                Err(error) => tracing::error!(%error, "skipping undecodable capture record"),
            }
        }
        out.sort_by(|a, b| b.submitted.cmp(&a.submitted).then_with(|| b.id.cmp(&a.id)));
        Ok(out)
    }

    /// Read-modify-write with compare-and-swap, retried on conflict.
    pub async fn update_capture(
        &self,
        account: &str,
        id: &str,
        mut change: impl FnMut(&mut CaptureRecord),
    ) -> Result<CaptureRecord> {
        let key = capture_key(account, id);
        loop {
            let kv = self.store.get(&key).await?.ok_or_else(|| RepoError::NotFound(key.clone()))?;
            let mut record: CaptureRecord = decode(&key, &kv.value)?;
            change(&mut record);
            if self.store.compare_and_put(&key, Some(kv.mod_revision), encode(&record), None).await?.is_some() {
                return Ok(record);
            }
        }
    }

    pub async fn list_ownerships(&self, account: &str) -> Result<Vec<OwnershipRecord>> {
        let mut out = Vec::new();
        for kv in self.store.list(&format!("{PREFIX}/ownerships/{account}/")).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }

    pub async fn get_ownership(&self, account: &str, id: &str) -> Result<Option<OwnershipRecord>> {
        let key = ownership_key(account, id);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    pub async fn put_ownership(&self, record: &OwnershipRecord) -> Result<()> {
        self.store.put(&ownership_key(&record.account_id, &record.id), encode(record), None).await?;
        Ok(())
    }

    pub async fn delete_ownership(&self, account: &str, id: &str) -> Result<bool> {
        Ok(self.store.delete(&ownership_key(account, id)).await?)
    }

    /// Publishes an agent's presence (leased) and remembers it as known (not leased), so a
    /// capture can name the PoPs that are offline.
    pub async fn put_agent(&self, presence: &AgentPresence, lease: LeaseId) -> Result<()> {
        let key = format!("{PREFIX}/agents/{}", presence.agent_id);
        self.store.put(&key, encode(presence), Some(lease)).await?;
        self.store.put(&format!("{PREFIX}/known-agents/{}", presence.agent_id), encode(presence), None).await?;
        Ok(())
    }

    /// Every agent ever connected (its last presence), online or not.
    pub async fn list_known_agents(&self) -> Result<Vec<AgentPresence>> {
        let mut out = Vec::new();
        for kv in self.store.list(&format!("{PREFIX}/known-agents/")).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }

    pub async fn put_job(&self, job: &JobRecord) -> Result<()> {
        self.store.put(&job_key(&job.agent_id, &job.capture_id), encode(job), None).await?;
        Ok(())
    }

    pub async fn get_job(&self, agent: &str, capture: &str) -> Result<Option<JobRecord>> {
        let key = job_key(agent, capture);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    pub async fn jobs_for_agent(&self, agent: &str) -> Result<Vec<JobRecord>> {
        let mut out = Vec::new();
        for kv in self.store.list(&format!("{PREFIX}/jobs/{agent}/")).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }

    pub async fn delete_job(&self, agent: &str, capture: &str) -> Result<()> {
        self.store.delete(&job_key(agent, capture)).await?;
        Ok(())
    }

    /// One PoP's progress, with the revision to compare-and-swap against.
    pub async fn get_pop(&self, capture: &str, agent: &str) -> Result<Option<(PopResult, Revision)>> {
        let key = pop_key(capture, agent);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some((decode(&key, &kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Writes a PoP's progress if the key is still at `expected` (`None`: absent).
    pub async fn cas_pop(
        &self,
        capture: &str,
        agent: &str,
        expected: Option<Revision>,
        pop: &PopResult,
    ) -> Result<bool> {
        Ok(self.store.compare_and_put(&pop_key(capture, agent), expected, encode(pop), None).await?.is_some())
    }

    /// Read-modify-write of one PoP's progress with compare-and-swap (like
    /// [`Repo::update_capture`]); nothing is written when `change` leaves it as it was.
    /// Returns the new state if it was written; `None` if the key is absent, unchanged, or
    /// lost the race five times in a row.
    pub async fn update_pop(
        &self,
        capture: &str,
        agent: &str,
        mut change: impl FnMut(&mut PopResult),
    ) -> Result<Option<PopResult>> {
        for _ in 0..5 {
            let Some((before, revision)) = self.get_pop(capture, agent).await? else { return Ok(None) };
            let mut pop = before.clone();
            change(&mut pop);
            if pop == before {
                return Ok(None);
            }
            if self.cas_pop(capture, agent, Some(revision), &pop).await? {
                return Ok(Some(pop));
            }
        }
        Ok(None)
    }

    pub async fn list_pops(&self, capture: &str) -> Result<Vec<PopResult>> {
        let mut out = Vec::new();
        for kv in self.store.list(&format!("{PREFIX}/pops/{capture}/")).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }

    pub async fn put_shard(&self, capture: &str, agent: &str, name: &str, shard: &ShardRef) -> Result<()> {
        self.store.put(&format!("{PREFIX}/shards/{capture}/{agent}/{name}"), encode(shard), None).await?;
        Ok(())
    }

    /// Delivered shards of a capture: (agent id, shard), in key order.
    pub async fn list_shards(&self, capture: &str) -> Result<Vec<(String, ShardRef)>> {
        let prefix = format!("{PREFIX}/shards/{capture}/");
        let mut out = Vec::new();
        for kv in self.store.list(&prefix).await? {
            let agent = kv.key[prefix.len()..].split('/').next().unwrap_or("").to_string();
            out.push((agent, decode(&kv.key, &kv.value)?));
        }
        Ok(out)
    }

    /// Removes a finished capture's working keys (its pops and shards lists live on in the
    /// capture record).
    pub async fn delete_capture_work(&self, capture: &str, agents: &[String]) -> Result<()> {
        for agent in agents {
            self.store.delete(&job_key(agent, capture)).await?;
            self.store.delete(&pop_key(capture, agent)).await?;
        }
        for kv in self.store.list(&format!("{PREFIX}/shards/{capture}/")).await? {
            self.store.delete(&kv.key).await?;
        }
        Ok(())
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentPresence>> {
        let mut out = Vec::new();
        for kv in self.store.list(&format!("{PREFIX}/agents/")).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }
}
