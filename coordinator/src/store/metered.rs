//! A state store that counts its failures in the metrics (`edgecap_state_store_errors`),
//! by operation, and otherwise passes everything through.

use std::sync::Arc;
use std::time::Duration;

use edgecap_state::{KeyValue, LeaseId, Result, Revision, StateStore, WatchStream};

use crate::metrics::Metrics;

/// Wraps the store the coordinator opened.
#[derive(Clone)]
pub(crate) struct Metered {
    inner: Arc<dyn StateStore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Metered {
    pub(crate) fn new(inner: Arc<dyn StateStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn count<T>(&self, op: &'static str, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.metrics.store_error(op);
        }
        result
    }
}

#[async_trait::async_trait]
impl StateStore for Metered {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.count("get", self.inner.get(key).await)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.count("list", self.inner.list(prefix).await)
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.count("list_keys", self.inner.list_keys(prefix).await)
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        self.count("put", self.inner.put(key, value, lease).await)
    }
    async fn compare_and_put(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        self.count("compare_and_put", self.inner.compare_and_put(key, expected, value, lease).await)
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.count("delete", self.inner.delete(key).await)
    }
    async fn delete_all(&self, keys: &[String]) -> Result<u64> {
        self.count("delete_all", self.inner.delete_all(keys).await)
    }
    async fn put_all_if_absent(&self, absent: &[String], puts: Vec<(String, Vec<u8>)>) -> Result<bool> {
        self.count("put_all_if_absent", self.inner.put_all_if_absent(absent, puts).await)
    }
    async fn compare_and_put_all(&self, puts: Vec<(String, Option<Revision>, Vec<u8>)>) -> Result<bool> {
        self.count("compare_and_put_all", self.inner.compare_and_put_all(puts).await)
    }
    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool> {
        self.count("compare_and_delete", self.inner.compare_and_delete(key, expected).await)
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        self.count("watch", self.inner.watch(prefix, from).await)
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.count("grant_lease", self.inner.grant_lease(ttl).await)
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.count("keep_alive", self.inner.keep_alive(lease).await)
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.count("revoke_lease", self.inner.revoke_lease(lease).await)
    }
    async fn revision(&self) -> Result<Revision> {
        self.count("revision", self.inner.revision().await)
    }
}
