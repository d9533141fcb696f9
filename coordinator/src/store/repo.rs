//! The coordinator's key layout over the state store. Every key the coordinator writes is
//! built in [`keys`], so the whole persisted schema is visible in one file (see
//! `docs/state.md`).
//!
//! ```text
//! /edgecap/v1/tokens/{sha256(token)}                      TokenRecord             tokens are never stored in clear
//! /edgecap/v1/captures/{account}/{id}                     CaptureRecord           account first: listing is one prefix read
//! /edgecap/v1/accounts/{account}                          AccountScope            the account's prefixes and PoPs (read at every capture)
//! /edgecap/v1/ownerships/{account}/{id}                   OwnershipRecord
//! /edgecap/v1/agents/{agent_id}                           AgentPresence (leased)  disappears when the agent's lease lapses
//! /edgecap/v1/replicas/{name}                             {"since"} (leased, 3 s)  a live coordinator replica: presences naming a dead one are ignored
//! /edgecap/v1/known-agents/{agent_id}                     AgentPresence           last presence of every agent ever seen (offline PoPs)
//! /edgecap/v1/jobs/{agent_id}/{capture_id}                JobRecord               what one agent must do; watched by every replica
//! /edgecap/v1/pops/{capture_id}/{agent_id}                PopResult               one PoP's progress, written by its agent's replica
//! /edgecap/v1/shards/{capture_id}/{agent_id}/{shard}      ShardRef                one delivered shard (idempotent by key)
//! /edgecap/v1/uploads/{capture_id}/{sha256(upload id)}    OpenUpload              a multipart upload granted to an agent, not completed yet
//! /edgecap/v1/leader                                      {"name", "since"} (leased)  the replica that runs captures to their end
//! /edgecap/v1/bootstrap-tokens/{sha256(token)}           BootstrapToken          which PoPs an agent may enroll for, until when
//! /edgecap/v1/certs/{agent_id}/{serial}                   IssuedCert              certificates signed for enrolled agents
//! /edgecap/v1/revoked/{serial}                            Revocation              refused at the next handshake, on every replica
//! /edgecap/v1/revoked-agents/{agent_id}                   AgentRevocation         bootstrap tokens older than this cannot re-enroll the agent
//! /edgecap/v1/budget/{capture_id}                         Budget                  a full capture's limits shared by its PoPs: what each may write (CAS)
//! /edgecap/v1/active/{capture_id}                         {"account"}             unfinished full captures: what the leader follows
//! /edgecap/v1/created/{yyyy-mm-dd}/{account}/{id}        {}                      captures by creation day: what retention deletes
//! /edgecap/v1/retention-cursor                            "yyyy-mm-dd"            first creation day not yet swept
//! /edgecap/v1/schema/active-index                         {}                      the active index was built from the records
//! /edgecap/v1/active-full/{account}                       [{"id", "reserved_ns"}]  the account's active full captures (CAS: the limit holds across replicas)
//! /edgecap/v1/sample-jobs/{agent_id}/{request_id}         SampleQuery (protobuf, leased)   relayed to the agent's replica
//! /edgecap/v1/sample-batches/{request_id}                 query + agent ids (leased)       relayed to every replica
//! /edgecap/v1/sample-answers/{request_id}/{agent_id}/{n}  SampleChunk (protobuf, leased)   its answer, in chunks
//!   (for a batch: `{request_id}/batch-{answering instance}/{n}`, many agents' chunks packed)
//!   (request ids are `{instance}/{id}`: one prefix per asking replica process, one watch)
//! ```

use std::sync::Arc;

use edgecap_state::{Revision, StateError, StateStore};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{CaptureRecord, OwnershipRecord};

/// The one place keys are built.
pub(super) mod keys {
    pub const PREFIX: &str = "/edgecap/v1";

    pub fn token(hash: &str) -> String {
        format!("{PREFIX}/tokens/{hash}")
    }
    pub fn tokens() -> String {
        format!("{PREFIX}/tokens/")
    }
    pub fn capture(account: &str, id: &str) -> String {
        format!("{PREFIX}/captures/{account}/{id}")
    }
    pub fn captures_of(account: &str) -> String {
        format!("{PREFIX}/captures/{account}/")
    }
    pub fn all_captures() -> String {
        format!("{PREFIX}/captures/")
    }
    pub fn account(account: &str) -> String {
        format!("{PREFIX}/accounts/{account}")
    }
    pub fn accounts() -> String {
        format!("{PREFIX}/accounts/")
    }
    pub fn ownership(account: &str, id: &str) -> String {
        format!("{PREFIX}/ownerships/{account}/{id}")
    }
    pub fn ownerships_of(account: &str) -> String {
        format!("{PREFIX}/ownerships/{account}/")
    }
    pub fn agent(agent: &str) -> String {
        format!("{PREFIX}/agents/{agent}")
    }
    pub fn agents() -> String {
        format!("{PREFIX}/agents/")
    }
    pub fn replica(name: &str) -> String {
        format!("{PREFIX}/replicas/{name}")
    }
    pub fn replicas() -> String {
        format!("{PREFIX}/replicas/")
    }
    pub fn known_agent(agent: &str) -> String {
        format!("{PREFIX}/known-agents/{agent}")
    }
    pub fn known_agents() -> String {
        format!("{PREFIX}/known-agents/")
    }
    pub fn job(agent: &str, capture: &str) -> String {
        format!("{PREFIX}/jobs/{agent}/{capture}")
    }
    pub fn jobs_of(agent: &str) -> String {
        format!("{PREFIX}/jobs/{agent}/")
    }
    pub fn jobs() -> String {
        format!("{PREFIX}/jobs/")
    }
    pub fn pop(capture: &str, agent: &str) -> String {
        format!("{PREFIX}/pops/{capture}/{agent}")
    }
    pub fn pops_of(capture: &str) -> String {
        format!("{PREFIX}/pops/{capture}/")
    }
    pub fn shard(capture: &str, agent: &str, name: &str) -> String {
        format!("{PREFIX}/shards/{capture}/{agent}/{name}")
    }
    pub fn shards_of(capture: &str) -> String {
        format!("{PREFIX}/shards/{capture}/")
    }
    pub fn upload(capture: &str, upload_hash: &str) -> String {
        format!("{PREFIX}/uploads/{capture}/{upload_hash}")
    }
    pub fn uploads_of(capture: &str) -> String {
        format!("{PREFIX}/uploads/{capture}/")
    }
    pub fn active_full(account: &str) -> String {
        format!("{PREFIX}/active-full/{account}")
    }
    pub fn bootstrap_token(hash: &str) -> String {
        format!("{PREFIX}/bootstrap-tokens/{hash}")
    }
    pub fn bootstrap_tokens() -> String {
        format!("{PREFIX}/bootstrap-tokens/")
    }
    pub fn cert(agent: &str, serial: &str) -> String {
        format!("{PREFIX}/certs/{agent}/{serial}")
    }
    pub fn certs() -> String {
        format!("{PREFIX}/certs/")
    }
    pub fn certs_of(agent: &str) -> String {
        format!("{PREFIX}/certs/{agent}/")
    }
    pub fn revoked(serial: &str) -> String {
        format!("{PREFIX}/revoked/{serial}")
    }
    pub fn revocations() -> String {
        format!("{PREFIX}/revoked/")
    }
    pub fn revoked_agent(agent: &str) -> String {
        format!("{PREFIX}/revoked-agents/{agent}")
    }
    pub fn budget(capture: &str) -> String {
        format!("{PREFIX}/budget/{capture}")
    }
    pub fn active(capture: &str) -> String {
        format!("{PREFIX}/active/{capture}")
    }
    pub fn actives() -> String {
        format!("{PREFIX}/active/")
    }
    pub fn created(day: &str, account: &str, id: &str) -> String {
        format!("{PREFIX}/created/{day}/{account}/{id}")
    }
    pub fn created_on(day: &str) -> String {
        format!("{PREFIX}/created/{day}/")
    }
    pub fn created_all() -> String {
        format!("{PREFIX}/created/")
    }
    pub fn retention_cursor() -> String {
        format!("{PREFIX}/retention-cursor")
    }
    pub fn active_index_built() -> String {
        format!("{PREFIX}/schema/active-index")
    }
    pub fn leader() -> String {
        format!("{PREFIX}/leader")
    }
    pub fn sample_jobs() -> String {
        format!("{PREFIX}/sample-jobs/")
    }
    pub fn sample_batches() -> String {
        format!("{PREFIX}/sample-batches/")
    }
    pub fn sample_batch(request: &str) -> String {
        format!("{PREFIX}/sample-batches/{request}")
    }
    pub fn sample_job(agent: &str, request: &str) -> String {
        format!("{PREFIX}/sample-jobs/{agent}/{request}")
    }
    /// Answers to the queries of one replica process (request ids `{instance}/{id}`).
    pub fn sample_answers_of(instance: &str) -> String {
        format!("{PREFIX}/sample-answers/{instance}/")
    }
    pub fn sample_answer(request: &str, agent: &str, n: usize) -> String {
        format!("{PREFIX}/sample-answers/{request}/{agent}/{n:06}")
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Repo {
    store: Arc<dyn StateStore>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RepoError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("stored record {key} does not decode: {message}")]
    Decode { key: String, message: String },
    #[error("record {0} not found")]
    NotFound(String),
}

pub(crate) type Result<T, E = RepoError> = std::result::Result<T, E>;

/// An API token bound to an account (key: the token's SHA-256; the token itself is never
/// stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenRecord {
    pub account_id: String,
    /// Unique name, to list and revoke it by (older records have none: `""`).
    #[serde(default)]
    pub name: String,
    /// RFC 3339.
    #[serde(default)]
    pub created: String,
    /// Where it came from: `api` (created through the admin API), `file:{path}` (a tokens
    /// file, kept in step with it), or `config` (flags, environment).
    #[serde(default)]
    pub source: String,
}

pub(crate) fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    edgecap_common::hex(digest.as_ref())
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| RepoError::Decode { key: key.to_string(), message: e.to_string() })
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs (string keys, no maps with other keys) cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl Repo {
    pub(crate) fn new(store: Arc<dyn StateStore>) -> Self {
        Self { store }
    }

    pub(crate) fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Reads and decodes one key.
    pub(super) async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some(decode(key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// Reads and decodes every key under `prefix`, in key order.
    pub(super) async fn list_json<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for kv in self.store.list(prefix).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }

    /// Binds a token (given by its hash) to an account (idempotent; re-binding a token to
    /// another account moves it).
    pub(crate) async fn put_token(&self, hash: &str, record: &TokenRecord) -> Result<()> {
        self.store.put(&keys::token(hash), encode(record), None).await?;
        Ok(())
    }

    /// Every token record, with its hash.
    pub(crate) async fn list_tokens(&self) -> Result<Vec<(String, TokenRecord)>> {
        let prefix = keys::tokens();
        let mut out = Vec::new();
        for kv in self.store.list(&prefix).await? {
            let hash = kv.key[prefix.len()..].to_string();
            out.push((hash, decode(&kv.key, &kv.value)?));
        }
        Ok(out)
    }

    /// Revokes a token by its hash; whether it existed.
    pub(crate) async fn delete_token(&self, hash: &str) -> Result<bool> {
        Ok(self.store.delete(&keys::token(hash)).await?)
    }

    pub(crate) async fn account_for_token(&self, token: &str) -> Result<Option<String>> {
        Ok(self.get_json::<TokenRecord>(&keys::token(&token_hash(token))).await?.map(|t| t.account_id))
    }

    /// Writes a new capture record, indexed first (by creation day, and as active when it is
    /// a full capture), so no record exists that retention or the leader cannot find; an
    /// index entry whose record never appears is removed by them.
    pub(crate) async fn create_capture(&self, record: &CaptureRecord) -> Result<Revision> {
        self.put_created(&super::day_of(&record.submitted), &record.account_id, &record.id).await?;
        if record.capture_type == crate::model::CaptureType::Full {
            self.put_active(&record.account_id, &record.id).await?;
        }
        let key = keys::capture(&record.account_id, &record.id);
        self.store
            .compare_and_put(&key, None, encode(record), None)
            .await?
            .ok_or_else(|| RepoError::Decode { key, message: "id collision".into() })
    }

    pub(crate) async fn get_capture(&self, account: &str, id: &str) -> Result<Option<CaptureRecord>> {
        self.get_json(&keys::capture(account, id)).await
    }

    /// One account's captures, newest first.
    pub(crate) async fn list_captures(&self, account: &str) -> Result<Vec<CaptureRecord>> {
        self.list_captures_under(&keys::captures_of(account)).await
    }

    /// Every account's captures (for recovery after a restart).
    pub(crate) async fn list_all_captures(&self) -> Result<Vec<CaptureRecord>> {
        self.list_captures_under(&keys::all_captures()).await
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
    pub(crate) async fn update_capture(
        &self,
        account: &str,
        id: &str,
        mut change: impl FnMut(&mut CaptureRecord),
    ) -> Result<CaptureRecord> {
        let key = keys::capture(account, id);
        loop {
            let kv = self.store.get(&key).await?.ok_or_else(|| RepoError::NotFound(key.clone()))?;
            let mut record: CaptureRecord = decode(&key, &kv.value)?;
            change(&mut record);
            if self.store.compare_and_put(&key, Some(kv.mod_revision), encode(&record), None).await?.is_some() {
                return Ok(record);
            }
        }
    }

    pub(crate) async fn list_ownerships(&self, account: &str) -> Result<Vec<OwnershipRecord>> {
        self.list_json(&keys::ownerships_of(account)).await
    }

    pub(crate) async fn get_ownership(&self, account: &str, id: &str) -> Result<Option<OwnershipRecord>> {
        self.get_json(&keys::ownership(account, id)).await
    }

    /// An account's scope, if the operator set one.
    pub(crate) async fn get_account_scope(&self, account: &str) -> Result<Option<crate::model::AccountScope>> {
        self.get_json(&keys::account(account)).await
    }

    pub(crate) async fn put_account_scope(&self, account: &str, scope: &crate::model::AccountScope) -> Result<()> {
        self.store.put(&keys::account(account), encode(scope), None).await?;
        Ok(())
    }

    /// Whether there was one to delete.
    pub(crate) async fn delete_account_scope(&self, account: &str) -> Result<bool> {
        Ok(self.store.delete(&keys::account(account)).await?)
    }

    /// Every account's scope, with its account id.
    pub(crate) async fn list_account_scopes(&self) -> Result<Vec<(String, crate::model::AccountScope)>> {
        let prefix = keys::accounts();
        let mut out = Vec::new();
        for kv in self.store.list(&prefix).await? {
            out.push((kv.key[prefix.len()..].to_string(), decode(&kv.key, &kv.value)?));
        }
        Ok(out)
    }

    pub(crate) async fn put_ownership(&self, record: &OwnershipRecord) -> Result<()> {
        self.store.put(&keys::ownership(&record.account_id, &record.id), encode(record), None).await?;
        Ok(())
    }

    pub(crate) async fn delete_ownership(&self, account: &str, id: &str) -> Result<bool> {
        Ok(self.store.delete(&keys::ownership(account, id)).await?)
    }
}
