//! Sample queries for agents connected to another coordinator replica, relayed through the
//! state store (no replica-to-replica connections; keys in `store/repo.rs`).
//!
//! The asking replica writes the query under a lease at least as long as its timeout; every
//! replica watches the relayed queries and runs those of the agents connected to it, writing
//! the answer in chunks under a lease of at least a minute. Everything vanishes by itself
//! when its lease ends.
//!
//! Per relayed PoP that is one write each way. A replica reads the answers to its own queries
//! from one watch that lives as long as it does ([`Relay::run`]): request ids are
//! `{instance}/{id}`, so its answers (`sample-answers/{instance}/{id}/{agent}/{n}`) share a
//! prefix of their own. Leases are shared by the queries (and answers) written within a few
//! seconds of each other ([`SharedLease`]), not granted and revoked for each one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecap_common::lock;
use edgecap_common::tasks::Tasks;
use edgecap_proto::agent::v1 as pb;
use edgecap_state::KeyValue;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub(crate) use super::lease::SharedLease;
use super::taken::TakenUp;
use crate::agents::{Registry, SampleAnswer};
use crate::store::Repo;

/// This replica's relayed queries: their leases and where their answers go.
pub(crate) struct Relay {
    pub(super) repo: Repo,
    /// Names this process's requests: a new one at every start.
    pub(super) instance: String,
    /// Request id (without the instance) -> the asking task: answer chunks as they come, or
    /// why some may never come.
    pub(super) waiting: Mutex<HashMap<String, mpsc::UnboundedSender<Result<KeyValue, String>>>>,
    pub(super) queries: SharedLease,
    pub(super) answers: SharedLease,
}

/// Takes a request off the waiting list however its task ends.
pub(super) struct Waiting<'a> {
    relay: &'a Relay,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.relay.waiting).remove(&self.id);
    }
}

impl Relay {
    /// `timeout`: the longest a relayed query is waited for (its key lives at least that long).
    pub(crate) fn new(repo: Repo, timeout: Duration) -> Self {
        Self {
            repo,
            instance: crate::model::new_id(),
            waiting: Mutex::default(),
            queries: SharedLease::new(timeout + Duration::from_secs(5), Duration::from_secs(5)),
            answers: SharedLease::new(Duration::from_secs(60), Duration::from_secs(10)),
        }
    }

    /// Names `query` with a new request id of this replica and puts it on the waiting list
    /// (until the returned guard drops); its answers come through the receiver.
    pub(super) fn register(
        &self,
        query: &mut pb::SampleQuery,
    ) -> (Waiting<'_>, mpsc::UnboundedReceiver<Result<KeyValue, String>>) {
        let id = crate::model::new_id();
        query.request_id = format!("{}/{id}", self.instance);
        let (tx, events) = mpsc::unbounded_channel();
        lock(&self.waiting).insert(id.clone(), tx);
        (Waiting { relay: self, id }, events)
    }

    pub(super) fn answers_prefix(&self) -> String {
        self.repo.sample_answers_prefix(&self.instance)
    }

    /// Hands an answer chunk to the query waiting for it, if any.
    fn route(&self, kv: KeyValue) {
        let prefix = self.answers_prefix();
        let Some(id) = kv.key.strip_prefix(&prefix).and_then(|rest| rest.split('/').next()) else { return };
        if let Some(tx) = lock(&self.waiting).get(id) {
            let _ = tx.send(Ok(kv));
        }
    }

    /// After the watch was interrupted: every waiting query's answers written so far, read
    /// again (a chunk seen twice counts once); a query whose answers cannot be read is told
    /// why, rather than left to time out or end with chunks missing.
    async fn catch_up(&self) {
        let prefix = self.answers_prefix();
        let waiting: Vec<(String, mpsc::UnboundedSender<Result<KeyValue, String>>)> =
            lock(&self.waiting).iter().map(|(id, tx)| (id.clone(), tx.clone())).collect();
        for (id, tx) in waiting {
            match self.repo.store().list(&format!("{prefix}{id}/")).await {
                Ok(kvs) => kvs.into_iter().for_each(|kv| self.route(kv)),
                Err(error) => {
                    let _ = tx.send(Err(format!("relayed answer not read again after an interrupted watch: {error}")));
                }
            }
        }
    }

    /// Reads the answers to this replica's queries from one watch, until `cancel`; after an
    /// interruption, see [`Relay::catch_up`].
    pub(crate) async fn run(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let prefix = self.answers_prefix();
        let catch_up = || self.catch_up();
        let on_put = |kv| {
            self.route(kv);
            async {}
        };
        self.repo.follow_puts(&prefix, "relayed answers", &cancel, catch_up, on_put).await;
    }

    /// Asks a remote agent (connected to a replica of an earlier version, which reads no
    /// batches: `sample/batch.rs`) for its lookback window.
    pub(super) async fn sample(
        &self,
        agent_id: &str,
        mut query: pb::SampleQuery,
        timeout: Duration,
    ) -> Result<SampleAnswer, String> {
        let deadline = Instant::now() + timeout;
        let (_waiting, mut events) = self.register(&mut query);
        let query_limit = query.packet_limit as usize;
        let store = self.repo.store().clone();
        let encoded = query.encode_to_vec();
        self.queries
            .put(&store, |lease| self.repo.put_sample_job(agent_id, &query.request_id, encoded.clone(), lease))
            .await?;
        let mut chunks = std::collections::BTreeMap::new();
        loop {
            let kv = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Ok(kv))) => kv,
                Ok(Some(Err(error))) => return Err(error),
                Ok(None) => return Err("relay ended".into()),
                Err(_) => {
                    return Err(format!(
                        "agent did not answer within {} s (relayed through another coordinator)",
                        timeout.as_secs()
                    ));
                }
            };
            if self.repo.sample_answer_agent(&kv.key).as_deref() != Some(agent_id) {
                continue;
            }
            let chunk = pb::SampleChunk::decode(kv.value.as_slice()).map_err(|e| format!("relayed answer: {e}"))?;
            let done = chunk.done;
            chunks.insert(self.repo.sample_answer_seq(&kv.key), chunk);
            // The last chunk is written last, so all before it have arrived by then.
            if done {
                break;
            }
        }
        assemble(chunks, query_limit)
    }
}

/// An agent's answer (or why it gave none) as the chunks a replica relays.
pub(super) fn chunks_of(request_id: &str, answer: Result<SampleAnswer, String>) -> Vec<pb::SampleChunk> {
    match answer {
        Ok(answer) => pb::SampleChunk::split(request_id, answer.packets, answer.matched, answer.lookback),
        Err(error) => vec![pb::SampleChunk::failure(request_id, error)],
    }
}

/// One agent's relayed answer from its chunks by number; an error if one is missing before
/// the last (never a silently shorter answer).
pub(super) fn assemble(
    chunks: std::collections::BTreeMap<u32, pb::SampleChunk>,
    limit: usize,
) -> Result<SampleAnswer, String> {
    let mut answer = SampleAnswer::new(limit);
    for (expected, (seq, chunk)) in chunks.into_iter().enumerate() {
        if seq as usize != expected {
            return Err(format!("relayed answer incomplete: chunk {expected} is missing"));
        }
        if let Some(done) = answer.absorb(chunk) {
            return done.map(|()| answer);
        }
    }
    Err("relayed answer ended without its last chunk".into())
}

/// Runs the relayed queries of the agents connected to this replica, driven by a watch,
/// until `tasks` is cancelled; each query runs as one of `tasks`. When the watch (re)starts,
/// the queries stored meanwhile are read and run too (each once: [`TakenUp`]).
pub(crate) async fn serve(relay: Arc<Relay>, registry: Arc<Registry>, timeout: Duration, tasks: Tasks) {
    let repo = relay.repo.clone();
    let prefix = repo.sample_jobs_prefix();
    let cancel = tasks.token();
    let taken = TakenUp::for_timeout(timeout);
    let take_up = |kv: KeyValue| {
        if let Some(agent_id) = repo.sample_job_agent(&kv.key).filter(|a| registry.is_connected(a))
            && taken.first(&kv)
            && let Ok(query) = pb::SampleQuery::decode(kv.value.as_slice())
        {
            let (relay, registry) = (relay.clone(), registry.clone());
            tasks.spawn(async move { answer(&relay, &registry, &agent_id, query, timeout).await });
        }
    };
    super::taken::follow_requests(&repo, &prefix, "sample relay", &cancel, take_up).await;
}

async fn answer(relay: &Relay, registry: &Registry, agent_id: &str, query: pb::SampleQuery, timeout: Duration) {
    let request_id = query.request_id.clone();
    let chunks = chunks_of(&request_id, registry.sample(agent_id, query, timeout).await);
    let store = relay.repo.store().clone();
    for (n, chunk) in chunks.iter().enumerate() {
        let encoded = chunk.encode_to_vec();
        let written = relay
            .answers
            .put(&store, |lease| relay.repo.put_sample_answer(&request_id, agent_id, n, encoded.clone(), lease))
            .await;
        if let Err(error) = written {
            tracing::warn!(%agent_id, %error, "relayed sample answer not written");
            return;
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use futures::StreamExt as _;

    /// Plays the other replica: waits for each relayed query and writes `chunks(query)` as
    /// its answer (as `answer` does), plus stray chunks that must not be taken for it.
    async fn other_replica(
        repo: Repo,
        mut jobs: edgecap_state::WatchStream,
        count: usize,
        chunks: impl Fn(&pb::SampleQuery) -> Vec<pb::SampleChunk>,
    ) {
        let answers = SharedLease::new(Duration::from_secs(60), Duration::from_secs(10));
        let store = repo.store().clone();
        for _ in 0..count {
            let Some(Ok(edgecap_state::WatchEvent::Put(kv))) = jobs.next().await else { panic!("job watch ended") };
            let agent = repo.sample_job_agent(&kv.key).unwrap();
            let query = pb::SampleQuery::decode(kv.value.as_slice()).unwrap();
            let request = query.request_id.clone();
            // Another agent's chunk under the same request, and another request's chunk.
            let stray = pb::SampleChunk::failure(&request, "not this agent".into()).encode_to_vec();
            let other_request = format!("{request}x");
            for (req, who) in [(&request, "someone-else"), (&other_request, agent.as_str())] {
                answers.put(&store, |lease| repo.put_sample_answer(req, who, 0, stray.clone(), lease)).await.unwrap();
            }
            for (n, chunk) in chunks(&query).iter().enumerate() {
                let bytes = chunk.encode_to_vec();
                answers
                    .put(&store, |lease| repo.put_sample_answer(&request, &agent, n, bytes.clone(), lease))
                    .await
                    .unwrap();
            }
        }
    }

    /// `n` packets of `size` bytes, timestamps 0, 1, 2, …
    pub(in crate::sample) fn packets(n: usize, size: usize) -> Vec<pb::Packet> {
        (0..n)
            .map(|i| pb::Packet {
                ts_ns: i as u64,
                orig_len: size as u32,
                data: vec![i as u8; size],
                ..Default::default()
            })
            .collect()
    }

    /// A relayed answer of several chunks arrives whole through the replica's one watch; other
    /// agents' and other requests' chunks are not mixed in; queries written close together
    /// share a lease; nothing stays on the waiting list; an unanswered query times out.
    #[tokio::test]
    async fn relayed_answers_arrive_whole_through_one_watch() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let relay = Arc::new(Relay::new(repo.clone(), Duration::from_secs(5)));
        let cancel = tokio_util::sync::CancellationToken::new();
        let runner = tokio::spawn(relay.clone().run(cancel.clone()));

        // 3 000 packets of 1 000 bytes: 3 MB, several chunks under the 1 MiB limit.
        let jobs = repo.store().watch(&repo.sample_jobs_prefix(), 0).await.unwrap();
        let answering = tokio::spawn(other_replica(repo.clone(), jobs, 2, |query| {
            pb::SampleChunk::split(&query.request_id, packets(3000, 1000), 3000, pb::LookbackStats::default())
        }));
        assert!(pb::SampleChunk::split("r", packets(3000, 1000), 3000, Default::default()).len() >= 3);
        let query = pb::SampleQuery { packet_limit: 5000, ..Default::default() };
        for agent in ["agent-a", "agent-b"] {
            let answer = relay.sample(agent, query.clone(), Duration::from_secs(5)).await.unwrap();
            assert_eq!(answer.packets.len(), 3000, "{agent}: every chunk arrived");
            assert!(answer.packets.iter().enumerate().all(|(i, p)| p.ts_ns == i as u64 && p.data.len() == 1000));
            assert_eq!(answer.matched, 3000);
        }
        answering.await.unwrap();
        let jobs = repo.store().list(&repo.sample_jobs_prefix()).await.unwrap();
        assert_eq!(jobs.len(), 2);
        assert!(jobs[0].lease.is_some() && jobs[0].lease == jobs[1].lease, "one lease for both queries");
        assert!(jobs.iter().all(|kv| kv.key.contains(&relay.instance)), "request ids name the instance");
        assert!(lock(&relay.waiting).is_empty());

        // Nobody answers: the query's own timeout, and it leaves the waiting list.
        let error = relay.sample("agent-c", query, Duration::from_millis(300)).await.unwrap_err();
        assert!(error.contains("did not answer within"), "{error}");
        assert!(lock(&relay.waiting).is_empty());
        cancel.cancel();
        runner.await.unwrap();
    }

    /// A chunk missing before the last is an error, never a shorter answer.
    #[test]
    fn a_gap_in_the_chunks_is_an_error() {
        let mut chunks = pb::SampleChunk::split("r", packets(3000, 1000), 3000, pb::LookbackStats::default());
        assert!(chunks.len() >= 3);
        let whole: std::collections::BTreeMap<u32, pb::SampleChunk> =
            chunks.iter().cloned().enumerate().map(|(n, c)| (n as u32, c)).collect();
        assert_eq!(assemble(whole, 5000).unwrap().packets.len(), 3000);
        let last = chunks.len() as u32 - 1;
        let done = chunks.pop().unwrap();
        let gap: std::collections::BTreeMap<u32, pb::SampleChunk> =
            [(0, chunks.remove(0)), (last, done)].into_iter().collect();
        let error = assemble(gap, 5000).unwrap_err();
        assert!(error.contains("chunk 1 is missing"), "{error}");
    }
}
