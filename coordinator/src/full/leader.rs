//! Leader election: a leased key in the state store. The leader follows every unfinished
//! full capture ([`super::follow`]); it steps down as soon as its lease cannot be renewed, so
//! two replicas never act as leader at once for longer than a renewal interval.

use std::sync::Arc;
use std::time::Duration;

use edgecap_common::tasks::Tasks;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::FullCaptures;

/// How long a stepping-down leader waits for its captures' runners to finish their clean-up.
const STEP_DOWN_GRACE: Duration = Duration::from_secs(10);

impl FullCaptures {
    /// Campaigns for leadership until `cancel`; while leader, follows every unfinished full
    /// capture to its end.
    pub(crate) async fn lead(self: Arc<Self>, cancel: CancellationToken) {
        let store = self.repo.store().clone();
        let key = self.repo.leader_key();
        let ttl = self.settings.leader_ttl;
        while !cancel.is_cancelled() {
            let attempt = async {
                let lease = store.grant_lease(ttl).await?;
                let value = serde_json::to_vec(&serde_json::json!({
                    "name": self.name, "since": crate::model::rfc3339(time::OffsetDateTime::now_utc()),
                }))
                .unwrap_or_default();
                if store.compare_and_put(&key, None, value, Some(lease)).await?.is_none() {
                    let _ = store.revoke_lease(lease).await;
                    return Ok::<_, edgecap_state::StateError>(None);
                }
                Ok(Some(lease))
            }
            .await;
            let lease = match attempt {
                Ok(Some(lease)) => lease,
                Ok(None) | Err(_) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            };
            tracing::info!(name = %self.name, "elected leader");
            self.leader.send_replace(true);
            let work = Tasks::child_of(&cancel);
            work.spawn(self.clone().follow_captures(work.clone()));
            // Keep the lease; step down as soon as it cannot be renewed (another replica may
            // take over after the TTL, so this one must stop acting first).
            let mut last_renewal = Instant::now();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
                match tokio::time::timeout(ttl / 3, store.keep_alive(lease)).await {
                    Ok(Ok(())) => last_renewal = Instant::now(),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "leader lease not renewed");
                        if !error.is_retryable() || last_renewal.elapsed() > ttl / 2 {
                            break;
                        }
                    }
                    Err(_) => {
                        if last_renewal.elapsed() > ttl / 2 {
                            break;
                        }
                    }
                }
            }
            // Every runner stops and cleans up (scratch files, multipart uploads) first.
            work.shutdown(STEP_DOWN_GRACE).await;
            self.leader.send_replace(false);
            let _ = store.revoke_lease(lease).await;
            tracing::info!(name = %self.name, "no longer leader");
        }
    }
}
