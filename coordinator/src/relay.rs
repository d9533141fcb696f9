//! Sample queries for agents connected to another coordinator replica, relayed through the
//! state store (no replica-to-replica connections):
//!
//! ```text
//! /edgecap/v1/sample-jobs/{agent_id}/{request_id}        SampleQuery (protobuf), leased
//! /edgecap/v1/sample-answers/{request_id}/{agent_id}/{n}  SampleChunk (protobuf), leased
//! ```
//!
//! The asking replica writes the query under a lease as long as its timeout and watches the
//! answers; every replica watches `sample-jobs/` and runs the queries of the agents connected
//! to it, writing the answer in chunks (1000 packets each, well under etcd's value limit) under
//! a short lease. Everything vanishes by itself when its lease ends.

use std::sync::Arc;
use std::time::Duration;

use edgecap_proto::agent::v1 as pb;
use edgecap_state::WatchEvent;
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::control::{Registry, SampleAnswer};
use crate::repo::{PREFIX, Repo};

fn jobs_prefix() -> String {
    format!("{PREFIX}/sample-jobs/")
}

/// Asks a remote agent (connected to another replica) for its lookback window.
pub async fn remote_sample(
    repo: &Repo,
    agent_id: &str,
    mut query: pb::SampleQuery,
    timeout: Duration,
) -> Result<SampleAnswer, String> {
    let store = repo.store().clone();
    let request_id = crate::model::new_id();
    query.request_id = request_id.clone();
    let answers = format!("{PREFIX}/sample-answers/{request_id}/{agent_id}/");
    let lease = store.grant_lease(timeout + Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let result = async {
        let revision = store.revision().await.map_err(|e| e.to_string())?;
        let mut events = store.watch(&answers, revision + 1).await.map_err(|e| e.to_string())?;
        store
            .put(&format!("{}{agent_id}/{request_id}", jobs_prefix()), query.encode_to_vec(), Some(lease))
            .await
            .map_err(|e| e.to_string())?;
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
            let seq: u32 = kv.key.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let done = chunk.done;
            chunks.insert(seq, chunk);
            // The last chunk is written last, so all before it have arrived by then.
            if done {
                break;
            }
        }
        let mut answer = SampleAnswer::default();
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

/// Runs the relayed queries of the agents connected to this replica, driven by a watch.
pub async fn serve(repo: Repo, registry: Arc<Registry>, timeout: Duration, cancel: CancellationToken) {
    let prefix = jobs_prefix();
    let on_put = |kv: edgecap_state::KeyValue| {
        let asked = kv.key.strip_prefix(&prefix).and_then(|r| r.split('/').next()).map(str::to_string);
        if let Some(agent_id) = asked.filter(|a| registry.is_connected(a))
            && let Ok(query) = pb::SampleQuery::decode(kv.value.as_slice())
        {
            let (repo, registry) = (repo.clone(), registry.clone());
            tokio::spawn(async move { answer(&repo, &registry, &agent_id, query, timeout).await });
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
    let store = repo.store();
    let Ok(lease) = store.grant_lease(Duration::from_secs(60)).await else { return };
    for (n, chunk) in chunks.iter().enumerate() {
        let key = format!("{PREFIX}/sample-answers/{request_id}/{agent_id}/{n:06}");
        if let Err(error) = store.put(&key, chunk.encode_to_vec(), Some(lease)).await {
            tracing::warn!(%agent_id, %error, "relayed sample answer not written");
            return;
        }
    }
}
