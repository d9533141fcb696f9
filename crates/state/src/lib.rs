//! The state-store seam: everything the coordinators share (captures, per-PoP jobs, agents,
//! bucket ownerships, hashed tokens) lives behind [`StateStore`].
//!
//! The trait is shaped after etcd's data model so the etcd backend is a thin mapping:
//! a flat, ordered key space; a global, monotonically increasing revision; per-key
//! `mod_revision` for compare-and-swap; prefix watches that can start at a past revision;
//! and leases that delete their keys when they are not kept alive.
//!
//! Backends: [`embedded::EmbeddedStore`] (one process, persisted to a local directory; the
//! default). The etcd backend lands with its own issue. The backend is chosen in exactly
//! one place: [`open`].
//!
//! What this crate does not do: it knows nothing about captures or accounts; the typed key
//! layout lives with the coordinator (`coordinator/src/repo.rs`).

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

pub mod embedded;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

/// A store-wide revision. Every mutation increases it by one.
pub type Revision = u64;

/// A lease id. Keys attached to a lease are deleted when the lease expires or is revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// One stored key with its revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last change to this key; the token for [`StateStore::compare_and_put`].
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, mod_revision: Revision },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Errors, sorted by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store cannot be reached now; retry with backoff (API writes answer 503).
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for history that is gone; re-list and watch from the current revision.
    #[error("revision {requested} is compacted (oldest available {oldest})")]
    Compacted { requested: Revision, oldest: Revision },
    /// The lease expired or never existed.
    #[error("lease {0:?} not found")]
    LeaseNotFound(LeaseId),
    /// Local persistence failed.
    #[error("state store i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Persisted data could not be read back.
    #[error("state store data is corrupt: {0}")]
    Corrupt(String),
}

impl StateError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StateError::Unavailable(_) | StateError::Io(_))
    }
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// A stream of changes under a prefix, in revision order.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// The shared, revisioned key-value store. See the crate docs.
#[async_trait::async_trait]
pub trait StateStore: fmt::Debug + Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// All keys starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>>;
    /// Unconditional write. Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision>;
    /// Writes only if the key's `mod_revision` equals `expected` (`None`: the key must not
    /// exist). `Ok(None)` means the comparison failed and nothing was written.
    async fn compare_and_put(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>>;
    /// Deletes a key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// Changes under `prefix` with revision `>= from` (`from == 0`: only future changes).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream>;
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews a lease for its full TTL. `LeaseNotFound` once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Ends a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
    /// The store's current revision.
    async fn revision(&self) -> Result<Revision>;
}

/// Which backend to use; the only place backends are named.
#[derive(Clone, Debug)]
pub enum StateConfig {
    /// Persist under this directory (created if missing).
    Embedded { dir: PathBuf },
    /// In memory only (tests).
    Memory,
}

/// Opens the configured backend. Must be called inside a Tokio runtime (lease expiry runs
/// as a background task).
pub async fn open(config: &StateConfig) -> Result<Arc<dyn StateStore>> {
    match config {
        StateConfig::Embedded { dir } => Ok(Arc::new(embedded::EmbeddedStore::open(dir)?)),
        StateConfig::Memory => Ok(Arc::new(embedded::EmbeddedStore::in_memory())),
    }
}
