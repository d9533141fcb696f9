//! A lease shared by the keys written within a few seconds of each other (relayed sample
//! queries and answers): one grant per few seconds instead of a grant and a revocation per
//! key.

use std::sync::Arc;
use std::time::Duration;

use edgecap_state::{LeaseId, StateError, StateStore};
use tokio::time::Instant;

use crate::store::RepoError;

/// How long a relayed query's or answer's write is retried while the store is unreachable.
const WRITE_PATIENCE: Duration = Duration::from_secs(5);

/// A lease handed to every key written while it is young, then replaced: each key lives at
/// least `min_life` and at most `min_life + reuse`, at the cost of one grant per `reuse`.
pub(crate) struct SharedLease {
    min_life: Duration,
    reuse: Duration,
    current: tokio::sync::Mutex<Option<(LeaseId, Instant)>>,
}

impl SharedLease {
    pub(crate) fn new(min_life: Duration, reuse: Duration) -> Self {
        Self { min_life, reuse, current: tokio::sync::Mutex::new(None) }
    }

    /// A lease that lives at least `min_life` from now.
    async fn get(&self, store: &Arc<dyn StateStore>) -> Result<LeaseId, StateError> {
        let mut current = self.current.lock().await;
        if let Some((lease, granted)) = *current
            && granted.elapsed() < self.reuse
        {
            return Ok(lease);
        }
        // Whole seconds, rounded up (etcd rounds a lease's TTL down).
        let ttl = Duration::from_secs((self.min_life + self.reuse).as_secs_f64().ceil() as u64);
        let lease = store.grant_lease(ttl).await?;
        *current = Some((lease, Instant::now()));
        Ok(lease)
    }

    /// Forgets `lease` (it ended early, for example while the store was slow).
    async fn forget(&self, lease: LeaseId) {
        let mut current = self.current.lock().await;
        if current.is_some_and(|(l, _)| l == lease) {
            *current = None;
        }
    }

    /// Writes with a shared lease: with a new one if that lease has ended, and again every
    /// 200 ms for up to [`WRITE_PATIENCE`] while the store is unreachable (a relayed query's
    /// or answer's write lost to a blip would leave the asker waiting out its timeout).
    pub(super) async fn put<F, Fut>(&self, store: &Arc<dyn StateStore>, write: F) -> Result<(), String>
    where
        F: Fn(LeaseId) -> Fut,
        Fut: std::future::Future<Output = crate::store::Result<()>>,
    {
        let give_up = Instant::now() + WRITE_PATIENCE;
        let mut renewed = false;
        loop {
            let written = match self.get(store).await {
                Ok(lease) => match write(lease).await {
                    Err(RepoError::State(StateError::LeaseNotFound(_))) if !renewed => {
                        self.forget(lease).await;
                        renewed = true;
                        continue;
                    }
                    other => {
                        other.map_err(|e| (e.to_string(), matches!(e, RepoError::State(ref s) if s.is_retryable())))
                    }
                },
                Err(e) => Err((e.to_string(), e.is_retryable())),
            };
            match written {
                Ok(()) => return Ok(()),
                Err((_, true)) if Instant::now() + Duration::from_millis(200) < give_up => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Repo;

    /// A lease that ended early is replaced, and the write goes through.
    #[tokio::test]
    async fn a_shared_lease_that_ended_is_replaced() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let store = repo.store().clone();
        let shared = SharedLease::new(Duration::from_secs(60), Duration::from_secs(10));
        let first = shared.get(&store).await.unwrap();
        store.revoke_lease(first).await.unwrap();
        shared.put(&store, |lease| repo.put_sample_job("a", "i/1", vec![1], lease)).await.unwrap();
        let kv = store.list(&repo.sample_jobs_prefix()).await.unwrap().pop().unwrap();
        assert!(kv.lease.is_some() && kv.lease != Some(first));
    }
}
