//! An agent's presence in the state store: a key on a lease kept alive while its control
//! stream is up, so every replica sees which agents are connected, and where.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecap_common::lock;
use edgecap_state::{LeaseId, Revision, StateError};
use futures::StreamExt as _;
use tokio::sync::Notify;

use crate::store::{AgentPresence, Repo, RepoError};

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

/// The presence keys of the agents connected to this replica, all on one lease of the
/// replica's, renewed by [`Presences::run`] on one keep-alive stream: etcd hears from this
/// replica every `PRESENCE_TTL / 3` whatever the number of its agents (a lease per agent had
/// been 200 keep-alives a second at 1000 agents). A key is withdrawn with a compare-and-delete
/// of the revision this replica wrote, so an agent that moved to another replica (which wrote
/// its own) keeps that one.
pub(crate) struct Presences {
    repo: Repo,
    state: Mutex<State>,
    /// Wakes [`Presences::run`] when a write found the lease gone.
    lost: Notify,
}

#[derive(Default)]
struct State {
    lease: Option<LeaseId>,
    agents: HashMap<String, Entry>,
    /// Keys of ended sessions whose delete failed: retried at every renewal.
    withdrawn: Vec<(String, Revision)>,
}

struct Entry {
    /// The registry's connection number: a reconnect to this replica is a new entry.
    conn: u64,
    presence: AgentPresence,
    /// The key's revision as this replica wrote it; `None` until written.
    revision: Option<Revision>,
}

impl Presences {
    pub(crate) fn new(repo: Repo) -> Self {
        Self { repo, state: Mutex::default(), lost: Notify::new() }
    }

    /// The shared lease, granted if there is none.
    async fn lease(&self) -> Result<LeaseId, RepoError> {
        if let Some(lease) = lock(&self.state).lease {
            return Ok(lease);
        }
        let granted = self.repo.store().grant_lease(PRESENCE_TTL).await?;
        let mut state = lock(&self.state);
        match state.lease {
            // Another task granted one meanwhile: use it, and let ours lapse.
            Some(lease) => Ok(lease),
            None => {
                state.lease = Some(granted);
                Ok(granted)
            }
        }
    }

    /// Publishes a connected agent's presence (and remembers it as known). Logged, not
    /// returned, when the store is unreachable: [`Presences::run`] writes it when it can.
    pub(crate) async fn publish(&self, conn: u64, presence: AgentPresence) {
        let agent_id = presence.agent_id.clone();
        lock(&self.state).agents.insert(agent_id.clone(), Entry { conn, presence: presence.clone(), revision: None });
        if let Err(error) = self.repo.remember_agent(&presence).await {
            tracing::warn!(%agent_id, %error, "agent not remembered as known");
        }
        let written = async {
            let lease = self.lease().await?;
            self.repo.put_presence(&presence, lease).await
        };
        match written.await {
            Ok(revision) => self.written(&agent_id, conn, revision).await,
            Err(error) => {
                if matches!(error, RepoError::State(StateError::LeaseNotFound(_))) {
                    self.lost.notify_one();
                }
                tracing::warn!(%agent_id, %error, "agent presence not published yet; retrying at the next renewal");
            }
        }
    }

    /// Records the revision written for `conn`. If that session has ended meanwhile, the key
    /// is taken back; if a newer session of the agent has replaced it here, the newer one's
    /// presence is written again at the next renewal (this late write may have covered it).
    async fn written(&self, agent_id: &str, conn: u64, revision: Revision) {
        let stale = {
            let mut state = lock(&self.state);
            match state.agents.get_mut(agent_id) {
                Some(entry) if entry.conn == conn => {
                    entry.revision = Some(revision);
                    false
                }
                Some(entry) => {
                    if entry.revision.is_none_or(|r| r < revision) {
                        entry.revision = None;
                    }
                    false
                }
                None => true,
            }
        };
        if stale {
            self.delete(agent_id, revision).await;
        }
    }

    /// Compare-and-deletes a key this replica wrote; kept for the next renewal if the store
    /// cannot be reached (the shared lease lives as long as the replica: nothing else would).
    async fn delete(&self, agent_id: &str, revision: Revision) {
        if let Err(error) = self.repo.delete_presence(agent_id, revision).await {
            tracing::warn!(%agent_id, %error, "agent presence not withdrawn yet; retrying");
            lock(&self.state).withdrawn.push((agent_id.to_owned(), revision));
        }
    }

    /// Withdraws an agent's presence when its session `conn` ends (unless a newer session
    /// of it has replaced it here, or another replica has written it since).
    pub(crate) async fn withdraw(&self, agent_id: &str, conn: u64) {
        let revision = {
            let mut state = lock(&self.state);
            if state.agents.get(agent_id).is_none_or(|e| e.conn != conn) {
                return;
            }
            state.agents.remove(agent_id).and_then(|e| e.revision)
        };
        if let Some(revision) = revision {
            self.delete(agent_id, revision).await;
        }
    }

    /// Keeps the shared lease alive until `cancel`, then revokes it (every presence of this
    /// replica goes at once). Every renewal also brings the keys in line with the sessions
    /// ([`Presences::reconcile`]).
    pub(crate) async fn run(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(PRESENCE_TTL / 3) => {}
                _ = self.lost.notified() => {}
            }
            let lease = lock(&self.state).lease;
            if let Some(lease) = lease {
                match self.repo.store().keep_alive(lease).await {
                    Ok(()) => {}
                    // The lease may well be alive: try again at the next tick.
                    Err(StateError::Unavailable(_)) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "agent presence lease lost; publishing every presence again");
                        let mut state = lock(&self.state);
                        if state.lease == Some(lease) {
                            state.lease = None;
                        }
                    }
                }
            }
            self.reconcile().await;
        }
        let lease = lock(&self.state).lease.take();
        if let Some(lease) = lease {
            let _ = self.repo.store().revoke_lease(lease).await;
        }
    }

    /// Brings the presence keys in line with the sessions, from one read of them all:
    /// deletes those still to withdraw; writes (create-only) those missing (a write that
    /// failed, a lease lost); rewrites those on this replica's lease at another revision than
    /// recorded (a write whose answer was lost, a late write of an ended session). A key
    /// another replica wrote is left alone. 32 writes at a time.
    async fn reconcile(&self) {
        let withdrawn = std::mem::take(&mut lock(&self.state).withdrawn);
        for (agent_id, revision) in withdrawn {
            self.delete(&agent_id, revision).await;
        }
        let (lease, keys) =
            match async { Ok::<_, RepoError>((self.lease().await?, self.repo.presence_keys().await?)) }.await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, "agent presences not checked; retrying");
                    return;
                }
            };
        let entries: Vec<(u64, AgentPresence, bool)> = lock(&self.state)
            .agents
            .values()
            .filter_map(|e| match keys.get(&e.presence.agent_id) {
                None => Some((e.conn, e.presence.clone(), true)),
                Some((Some(on), revision)) if *on == lease && e.revision != Some(*revision) => {
                    Some((e.conn, e.presence.clone(), false))
                }
                Some(_) => None,
            })
            .collect();
        let writes = futures::stream::iter(entries).map(|(conn, presence, missing)| async move {
            let written = if missing {
                self.repo.create_presence(&presence, lease).await
            } else {
                self.repo.put_presence(&presence, lease).await.map(Some)
            };
            match written {
                Ok(Some(revision)) => self.written(&presence.agent_id, conn, revision).await,
                // Written by another replica meanwhile: theirs.
                Ok(None) => {}
                Err(error) => tracing::warn!(agent_id = %presence.agent_id, %error, "agent presence not published"),
            }
        });
        writes.buffer_unordered(32).collect::<Vec<()>>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(agent: &str, replica: &str) -> AgentPresence {
        AgentPresence {
            agent_id: agent.into(),
            pop: "ams01".into(),
            interfaces: vec![],
            version: String::new(),
            coordinator: replica.into(),
            connected_at: String::new(),
            sample_rate: 1,
            announced: true,
            relay_batches: true,
        }
    }

    async fn key(repo: &Repo, agent: &str) -> Option<edgecap_state::KeyValue> {
        repo.store().get(&format!("/edgecap/v1/agents/{agent}")).await.unwrap()
    }

    /// One lease for every agent of a replica; a session that ends withdraws only the key it
    /// wrote (not a newer session's here, not another replica's); a lost lease is replaced
    /// and every presence written again, except where another replica has written since.
    #[tokio::test]
    async fn presences_share_a_lease_and_withdraw_only_their_own() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let (a, b) = (Arc::new(Presences::new(repo.clone())), Presences::new(repo.clone()));
        a.publish(1, presence("x", "a")).await;
        a.publish(2, presence("y", "a")).await;
        let (x, y) = (key(&repo, "x").await.unwrap(), key(&repo, "y").await.unwrap());
        assert!(x.lease.is_some() && x.lease == y.lease, "one lease for both");
        assert!(repo.store().get("/edgecap/v1/known-agents/x").await.unwrap().is_some(), "remembered as known");

        // x moves to replica b; its old session on a ends afterwards.
        b.publish(7, presence("x", "b")).await;
        a.withdraw("x", 1).await;
        let x = key(&repo, "x").await.expect("b's presence stays");
        assert!(String::from_utf8_lossy(&x.value).contains("\"coordinator\":\"b\""));

        // y reconnects to a (a new session) before its old one ends.
        a.publish(3, presence("y", "a")).await;
        a.withdraw("y", 2).await;
        assert!(key(&repo, "y").await.is_some(), "the newer session's presence stays");
        a.withdraw("y", 3).await;
        assert!(key(&repo, "y").await.is_none(), "withdrawn with its session");

        // x connects to a again, then to b while a's session of it lingers; a's lease is
        // lost (z's key goes with it).
        a.publish(5, presence("x", "a")).await;
        b.publish(8, presence("x", "b")).await;
        a.publish(4, presence("z", "a")).await;
        let lost = key(&repo, "z").await.unwrap().lease.unwrap();
        repo.store().revoke_lease(lost).await.unwrap();
        assert!(key(&repo, "z").await.is_none());
        let cancel = tokio_util::sync::CancellationToken::new();
        let runner = tokio::spawn(a.clone().run(cancel.clone()));
        a.lost.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let z = loop {
            if let Some(z) = key(&repo, "z").await {
                break z;
            }
            assert!(tokio::time::Instant::now() < deadline, "z published again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(z.lease.is_some() && z.lease != Some(lost), "on a new lease");
        assert!(String::from_utf8_lossy(&key(&repo, "x").await.unwrap().value).contains("\"coordinator\":\"b\""));

        // A presence whose write failed (etcd unreachable at connect) is written at the next
        // renewal; one written though its answer was lost is recognised as ours.
        let lease = lock(&a.state).lease.unwrap();
        for (agent, conn) in [("w", 10), ("v", 11)] {
            let entry = Entry { conn, presence: presence(agent, "a"), revision: None };
            lock(&a.state).agents.insert(agent.into(), entry);
        }
        repo.put_presence(&presence("v", "a"), lease).await.unwrap();
        a.reconcile().await;
        assert_eq!(key(&repo, "w").await.unwrap().lease, Some(lease));
        assert!(lock(&a.state).agents.values().all(|e| e.revision.is_some()), "every revision known");
        a.withdraw("v", 11).await;
        assert!(key(&repo, "v").await.is_none(), "withdrawn with the revision recognised");

        // A late write of an ended session (conn 12) lands after the newer session's (13):
        // the key is not deleted, and the newer session's presence is written again.
        a.publish(13, presence("u", "a")).await;
        let mut old = presence("u", "a");
        old.interfaces = vec!["old0".into()];
        let late = repo.put_presence(&old, lease).await.unwrap();
        a.written("u", 12, late).await;
        assert!(key(&repo, "u").await.is_some(), "the newer session's key is kept");
        a.reconcile().await;
        let u = key(&repo, "u").await.unwrap();
        assert!(!String::from_utf8_lossy(&u.value).contains("old0"), "the newer session's presence again");
        assert_eq!(lock(&a.state).agents["u"].revision, Some(u.mod_revision));

        // Shut down: a's lease is revoked, its presences go at once; b's stays.
        cancel.cancel();
        runner.await.unwrap();
        assert!(key(&repo, "z").await.is_none());
        assert!(key(&repo, "x").await.is_some());
    }
}
