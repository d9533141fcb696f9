//! An agent's presence in the state store: a key on a lease kept alive while its control
//! stream is up, so every replica sees which agents are connected, and where.

use std::time::Duration;

use edgecap_state::LeaseId;

use crate::store::{AgentPresence, Repo};

/// Lease of a presence key: an agent whose replica died disappears within about this long.
pub(super) const PRESENCE_TTL: Duration = Duration::from_secs(15);

/// Lease of a replica's own key: a dead replica's agents are ignored within about this long.
pub(crate) const REPLICA_TTL: Duration = Duration::from_secs(3);

/// Keeps this replica's `replicas/{name}` key alive until `cancel` (re-created if its lease
/// was lost), so other replicas can tell its agents' presence from a dead replica's.
pub(crate) async fn announce_replica(repo: Repo, name: String, cancel: tokio_util::sync::CancellationToken) {
    let mut lease: Option<LeaseId> = None;
    loop {
        let renewed = match lease {
            Some(id) => repo.store().keep_alive(id).await.is_ok(),
            None => false,
        };
        if !renewed {
            let announced = async {
                let id = repo.store().grant_lease(REPLICA_TTL).await?;
                repo.put_replica(&name, id).await?;
                Ok::<_, crate::store::RepoError>(id)
            };
            match announced.await {
                Ok(id) => lease = Some(id),
                Err(error) => {
                    tracing::warn!(%error, "replica not announced; retrying");
                    lease = None;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(REPLICA_TTL / 3) => {}
        }
    }
    if let Some(id) = lease {
        let _ = repo.store().revoke_lease(id).await;
    }
}

/// Publishes `presence` on a new lease; `None` (logged) if the store is unreachable.
pub(super) async fn publish(repo: &Repo, presence: &AgentPresence) -> Option<LeaseId> {
    let lease = match repo.store().grant_lease(PRESENCE_TTL).await {
        Ok(lease) => lease,
        Err(error) => {
            tracing::warn!(agent_id = %presence.agent_id, %error, "agent presence not published");
            return None;
        }
    };
    if let Err(error) = repo.put_agent(presence, lease).await {
        // Without the key the lease would renew fine and the presence never be written:
        // give it up, so the next renewal tick publishes again.
        tracing::warn!(agent_id = %presence.agent_id, %error, "agent presence not published");
        let _ = repo.store().revoke_lease(lease).await;
        return None;
    }
    Some(lease)
}
