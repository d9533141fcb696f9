//! Relayed sample queries for many agents at once: one key for the query and the agents it is
//! for, read by every replica, and answers packed many agents to a key by the replica they
//! are connected to (`sample/relay.rs` has the per-agent form older replicas speak, and the
//! watch both read their answers from).
//!
//! Per capture that is one write to ask and, per answering replica, one write per MiB of
//! answers (or per 10 ms while answers trickle in), where the per-agent form writes twice per
//! agent: etcd's write rate, not the fan-out, had bounded a sample capture over 300 PoPs on two
//! replicas.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use edgecap_common::tasks::Tasks;
use edgecap_proto::agent::v1 as pb;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use prost::Message;
use tokio::time::Instant;

use super::relay::Relay;
use crate::agents::{Registry, SampleAnswer};

/// A query for several agents (the value of `sample-batches/{instance}/{id}`).
#[derive(Clone, PartialEq, prost::Message)]
struct Batch {
    #[prost(message, optional, tag = "1")]
    query: Option<pb::SampleQuery>,
    #[prost(string, repeated, tag = "2")]
    agents: Vec<String>,
}

/// Answer chunks of several agents (the value of one answer key).
#[derive(Clone, PartialEq, prost::Message)]
struct Packed {
    #[prost(message, repeated, tag = "1")]
    chunks: Vec<AgentChunk>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AgentChunk {
    #[prost(string, tag = "1")]
    agent_id: String,
    /// The chunk's place in its agent's answer.
    #[prost(uint32, tag = "2")]
    seq: u32,
    #[prost(message, optional, tag = "3")]
    chunk: Option<pb::SampleChunk>,
}

/// How long answers that are in wait for more before they are written.
const LINGER: Duration = Duration::from_millis(10);

/// One agent's answer as it arrives: by answering replica (during a reconnect two replicas
/// may both count the agent as theirs and both answer; a success from either wins).
#[derive(Default)]
struct Arriving {
    chunks: HashMap<String, BTreeMap<u32, pb::SampleChunk>>,
    /// A failed answer, kept while another replica's is still coming.
    failure: Option<String>,
    result: Option<Result<SampleAnswer, String>>,
}

impl Relay {
    /// Asks remote agents (connected to other replicas) for their lookback windows with one
    /// relayed query; the answers in the order of `agents`.
    pub(crate) async fn sample_many(
        &self,
        agents: &[&str],
        mut query: pb::SampleQuery,
        timeout: Duration,
    ) -> Vec<Result<SampleAnswer, String>> {
        if agents.is_empty() {
            return Vec::new();
        }
        let deadline = Instant::now() + timeout;
        let (_waiting, mut events) = self.register(&mut query);
        let limit = query.packet_limit as usize;
        let request = query.request_id.clone();
        let batch = Batch { query: Some(query), agents: agents.iter().map(|a| (*a).to_owned()).collect() };
        let encoded = batch.encode_to_vec();
        let store = self.repo.store().clone();
        if let Err(error) =
            self.queries.put(&store, |lease| self.repo.put_sample_batch(&request, encoded.clone(), lease)).await
        {
            return agents.iter().map(|_| Err(format!("relayed query not written: {error}"))).collect();
        }
        let mut arriving: HashMap<&str, Arriving> = agents.iter().map(|a| (*a, Arriving::default())).collect();
        let mut left = agents.len();
        while left > 0 {
            let kv = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Ok(kv))) => kv,
                Ok(Some(Err(error))) => {
                    for agent in arriving.values_mut().filter(|a| a.result.is_none()) {
                        agent.result = Some(Err(error.clone()));
                    }
                    break;
                }
                _ => break,
            };
            let answerer = kv.key.rsplit('/').nth(1).unwrap_or_default().to_owned();
            let Ok(packed) = Packed::decode(kv.value.as_slice()) else {
                tracing::warn!(key = %kv.key, "relayed answers do not decode");
                continue;
            };
            for AgentChunk { agent_id, seq, chunk } in packed.chunks {
                let (Some(agent), Some(chunk)) = (arriving.get_mut(agent_id.as_str()), chunk) else { continue };
                if agent.result.is_some() {
                    continue;
                }
                let done = chunk.done;
                agent.chunks.entry(answerer.clone()).or_default().insert(seq, chunk);
                // An answerer writes an agent's chunks in order, the last one last.
                if done {
                    let chunks = agent.chunks.remove(&answerer).unwrap_or_default();
                    match super::relay::assemble(chunks, limit) {
                        Err(error) if !agent.chunks.is_empty() => agent.failure = Some(error),
                        result => {
                            agent.result = Some(result);
                            left -= 1;
                        }
                    }
                }
            }
        }
        agents
            .iter()
            .map(|a| {
                let agent = arriving.get_mut(a);
                agent.and_then(|r| r.result.take().or_else(|| r.failure.take().map(Err))).unwrap_or_else(|| {
                    Err(format!(
                        "agent did not answer within {} s (relayed through another coordinator)",
                        timeout.as_secs()
                    ))
                })
            })
            .collect()
    }
}

/// Runs the relayed batches that name agents connected to this replica, driven by a watch,
/// until `tasks` is cancelled; each batch runs as one of `tasks`.
pub(crate) async fn serve(relay: Arc<Relay>, registry: Arc<Registry>, timeout: Duration, tasks: Tasks) {
    let repo = relay.repo.clone();
    let prefix = repo.sample_batches_prefix();
    let cancel = tasks.token();
    let taken = super::taken::TakenUp::for_timeout(timeout);
    let take_up = |kv: edgecap_state::KeyValue| {
        if let Ok(Batch { query: Some(query), agents }) = Batch::decode(kv.value.as_slice()) {
            let here: Vec<String> = agents.into_iter().filter(|a| registry.is_connected(a)).collect();
            if !here.is_empty() && taken.first(&kv) {
                let (relay, registry) = (relay.clone(), registry.clone());
                tasks.spawn(async move { answer(&relay, &registry, here, query, timeout).await });
            }
        }
    };
    // When the watch (re)starts, the batches stored meanwhile are taken up too (each once).
    super::taken::follow_requests(&repo, &prefix, "sample batches", &cancel, take_up).await;
}

/// Asks `agents` (connected here) and writes their answers, packed, as they come in.
async fn answer(relay: &Relay, registry: &Registry, agents: Vec<String>, query: pb::SampleQuery, timeout: Duration) {
    let request = query.request_id.clone();
    let mut asked: FuturesUnordered<_> = agents
        .iter()
        .map(|agent| {
            let query = query.clone();
            async move { (agent, registry.sample(agent, query, timeout).await) }
        })
        .collect();
    let mut writer = Writer::new(relay, &request);
    let mut flush_at: Option<Instant> = None;
    loop {
        let linger = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = asked.next() => {
                let Some((agent, result)) = next else { break };
                let chunks = super::relay::chunks_of(&request, result);
                for (seq, chunk) in chunks.into_iter().enumerate() {
                    if !writer.add(AgentChunk { agent_id: agent.clone(), seq: seq as u32, chunk: Some(chunk) }).await {
                        return;
                    }
                }
                if !writer.pending.is_empty() {
                    flush_at.get_or_insert_with(|| Instant::now() + LINGER);
                }
            }
            () = linger => {
                if !writer.flush().await {
                    return;
                }
                flush_at = None;
            }
        }
    }
    writer.flush().await;
}

/// Packs answer chunks into keys of at most [`edgecap_proto::CHUNK_BYTES`] (plus one
/// agent's chunk), written in order.
struct Writer<'a> {
    relay: &'a Relay,
    request: &'a str,
    next: usize,
    pending: Vec<AgentChunk>,
    bytes: usize,
}

impl<'a> Writer<'a> {
    fn new(relay: &'a Relay, request: &'a str) -> Self {
        Self { relay, request, next: 0, pending: Vec::new(), bytes: 0 }
    }

    /// Adds a chunk, writing what is pending first if the key would grow past the limit.
    /// False if a write failed (logged; the asking replica times the agents out).
    async fn add(&mut self, chunk: AgentChunk) -> bool {
        let size = chunk.encoded_len();
        if self.bytes + size > edgecap_proto::CHUNK_BYTES && !self.flush().await {
            return false;
        }
        self.bytes += size;
        self.pending.push(chunk);
        true
    }

    async fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let packed = Packed { chunks: std::mem::take(&mut self.pending) }.encode_to_vec();
        self.bytes = 0;
        let (relay, n) = (self.relay, self.next);
        self.next += 1;
        let store = relay.repo.store().clone();
        let written = relay
            .answers
            .put(&store, |lease| {
                relay.repo.put_sample_batch_answer(self.request, &relay.instance, n, packed.clone(), lease)
            })
            .await;
        if let Err(error) = written {
            tracing::warn!(request = %self.request, %error, "relayed sample answers not written");
            return false;
        }
        true
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
