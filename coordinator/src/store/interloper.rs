//! A state store for tests that injects the faults a real one shows: another writer between
//! a read and a transaction, lost races, an unreachable store, and a write that commits but
//! whose answer is lost.

use std::sync::Mutex;
use std::time::Duration;

use edgecap_common::lock;
use edgecap_state::Revision;

use super::Repo;

/// A store over another that, at its next `compare_and_put_all`, first writes a key of its
/// own (another writer between a batch's read and its transaction), or fails it as
/// unreachable; that refuses the next `lose_single` single compare-and-swaps (each one a
/// lost race); and whose next `put_all_if_absent` commits but answers late
/// (`answer_late_next`) or as if it timed out (`answer_lost_next`), once its watchers have
/// had time to see the write.
#[derive(Debug)]
pub(crate) struct Interloper {
    inner: std::sync::Arc<dyn edgecap_state::StateStore>,
    pub(crate) write_first: Mutex<Option<(String, Vec<u8>)>>,
    pub(crate) fail_next: std::sync::atomic::AtomicBool,
    pub(crate) lose_single: std::sync::atomic::AtomicU32,
    pub(crate) answer_lost_next: std::sync::atomic::AtomicBool,
    pub(crate) answer_late_next: std::sync::atomic::AtomicBool,
}

impl Interloper {
    pub(crate) fn over(repo: &Repo) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Interloper {
            inner: repo.store().clone(),
            write_first: Mutex::new(None),
            fail_next: std::sync::atomic::AtomicBool::new(false),
            lose_single: std::sync::atomic::AtomicU32::new(0),
            answer_lost_next: std::sync::atomic::AtomicBool::new(false),
            answer_late_next: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

#[async_trait::async_trait]
impl edgecap_state::StateStore for Interloper {
    async fn get(&self, key: &str) -> edgecap_state::Result<Option<edgecap_state::KeyValue>> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> edgecap_state::Result<Vec<edgecap_state::KeyValue>> {
        self.inner.list(prefix).await
    }
    async fn list_keys(&self, prefix: &str) -> edgecap_state::Result<Vec<String>> {
        self.inner.list_keys(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<edgecap_state::LeaseId>,
    ) -> edgecap_state::Result<Revision> {
        self.inner.put(key, value, lease).await
    }
    async fn compare_and_put(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<edgecap_state::LeaseId>,
    ) -> edgecap_state::Result<Option<Revision>> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.lose_single.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Ok(None);
        }
        self.inner.compare_and_put(key, expected, value, lease).await
    }
    async fn delete(&self, key: &str) -> edgecap_state::Result<bool> {
        self.inner.delete(key).await
    }
    async fn delete_all(&self, keys: &[String]) -> edgecap_state::Result<u64> {
        self.inner.delete_all(keys).await
    }
    async fn put_all_if_absent(&self, absent: &[String], puts: Vec<(String, Vec<u8>)>) -> edgecap_state::Result<bool> {
        use std::sync::atomic::Ordering::SeqCst;
        let written = self.inner.put_all_if_absent(absent, puts).await?;
        let (lost, late) = (self.answer_lost_next.swap(false, SeqCst), self.answer_late_next.swap(false, SeqCst));
        if lost || late {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if lost {
            return Err(edgecap_state::StateError::Unavailable("injected: the answer was lost".into()));
        }
        Ok(written)
    }
    async fn compare_and_put_all(&self, puts: Vec<(String, Option<Revision>, Vec<u8>)>) -> edgecap_state::Result<bool> {
        if self.fail_next.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(edgecap_state::StateError::Unavailable("injected".into()));
        }
        let first = lock(&self.write_first).take();
        if let Some((key, value)) = first {
            self.inner.put(&key, value, None).await?;
        }
        self.inner.compare_and_put_all(puts).await
    }
    async fn compare_and_delete(&self, key: &str, expected: Revision) -> edgecap_state::Result<bool> {
        self.inner.compare_and_delete(key, expected).await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> edgecap_state::Result<edgecap_state::WatchStream> {
        self.inner.watch(prefix, from).await
    }
    async fn grant_lease(&self, ttl: Duration) -> edgecap_state::Result<edgecap_state::LeaseId> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: edgecap_state::LeaseId) -> edgecap_state::Result<()> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: edgecap_state::LeaseId) -> edgecap_state::Result<()> {
        self.inner.revoke_lease(lease).await
    }
    async fn revision(&self) -> edgecap_state::Result<Revision> {
        self.inner.revision().await
    }
}
