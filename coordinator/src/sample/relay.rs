//! Sample queries for agents connected to another coordinator replica, relayed through the
//! state store (no replica-to-replica connections; keys in `store/repo.rs`).
//!
//! The asking replica writes the query under a lease as long as its timeout and watches the
//! answers; every replica watches the relayed queries and runs those of the agents connected
//! to it, writing the answer in chunks under a short lease. Everything vanishes by itself when
//! its lease ends.

use std::sync::Arc;
use std::time::Duration;

use edgecap_common::tasks::Tasks;
use edgecap_proto::agent::v1 as pb;
use edgecap_state::WatchEvent;
use futures::StreamExt;
use prost::Message;

use crate::agents::{Registry, SampleAnswer};
use crate::store::Repo;

/// Asks a remote agent (connected to another replica) for its lookback window.
pub(super) async fn remote_sample(
    repo: &Repo,
    agent_id: &str,
    mut query: pb::SampleQuery,
    timeout: Duration,
) -> Result<SampleAnswer, String> {
    let store = repo.store().clone();
    let request_id = crate::model::new_id();
    query.request_id = request_id.clone();
    let query_limit = query.packet_limit as usize;
    let lease = store.grant_lease(timeout + Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let result = async {
        let revision = store.revision().await.map_err(|e| e.to_string())?;
        let mut events =
            repo.watch_sample_answers(&request_id, agent_id, revision + 1).await.map_err(|e| e.to_string())?;
        repo.put_sample_job(agent_id, &request_id, query.encode_to_vec(), lease).await.map_err(|e| e.to_string())?;
        let mut chunks = std::collections::BTreeMap::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(Ok(e))) => e,
                Ok(Some(Err(e))) => return Err(format!("relay watch: {e}")),
                Ok(None) => return Err("relay watch ended".into()),
                Err(_) => {
                    return Err(format!(
                        "agent did not answer within {} s (relayed through another coordinator)",
                        timeout.as_secs()
                    ));
                }
            };
            let WatchEvent::Put(kv) = event else { continue };
            let chunk = pb::SampleChunk::decode(kv.value.as_slice()).map_err(|e| format!("relayed answer: {e}"))?;
            let done = chunk.done;
            chunks.insert(repo.sample_answer_seq(&kv.key), chunk);
            // The last chunk is written last, so all before it have arrived by then.
            if done {
                break;
            }
        }
        let mut answer = SampleAnswer::new(query_limit);
        for (_, chunk) in chunks {
            if let Some(done) = answer.absorb(chunk) {
                return done.map(|()| answer);
            }
        }
        Err("relayed answer ended without its last chunk".into())
    }
    .await;
    let _ = store.revoke_lease(lease).await;
    result
}

/// Runs the relayed queries of the agents connected to this replica, driven by a watch,
/// until `tasks` is cancelled; each query runs as one of `tasks`.
pub(crate) async fn serve(repo: Repo, registry: Arc<Registry>, timeout: Duration, tasks: Tasks) {
    let prefix = repo.sample_jobs_prefix();
    let cancel = tasks.token();
    let on_put = |kv: edgecap_state::KeyValue| {
        if let Some(agent_id) = repo.sample_job_agent(&kv.key).filter(|a| registry.is_connected(a))
            && let Ok(query) = pb::SampleQuery::decode(kv.value.as_slice())
        {
            let (repo, registry) = (repo.clone(), registry.clone());
            tasks.spawn(async move { answer(&repo, &registry, &agent_id, query, timeout).await });
        }
        async {}
    };
    repo.follow_puts(&prefix, "sample relay", &cancel, || async {}, on_put).await;
}

async fn answer(repo: &Repo, registry: &Registry, agent_id: &str, query: pb::SampleQuery, timeout: Duration) {
    let request_id = query.request_id.clone();
    let chunks = match registry.sample(agent_id, query, timeout).await {
        Ok(answer) => pb::SampleChunk::split(&request_id, answer.packets, answer.matched, answer.lookback),
        Err(error) => vec![pb::SampleChunk::failure(&request_id, error)],
    };
    let Ok(lease) = repo.store().grant_lease(Duration::from_secs(60)).await else { return };
    for (n, chunk) in chunks.iter().enumerate() {
        if let Err(error) = repo.put_sample_answer(&request_id, agent_id, n, chunk.encode_to_vec(), lease).await {
            tracing::warn!(%agent_id, %error, "relayed sample answer not written");
            return;
        }
    }
}
