//! An agent's presence in the state store: a key on a lease kept alive while its control
//! stream is up, so every replica sees which agents are connected, and where.

use std::time::Duration;

use edgecap_state::LeaseId;

use crate::store::{AgentPresence, Repo};

/// Lease of a presence key: an agent whose replica died disappears within about this long.
pub(super) const PRESENCE_TTL: Duration = Duration::from_secs(15);

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
        tracing::warn!(agent_id = %presence.agent_id, %error, "agent presence not published");
    }
    Some(lease)
}
