//! The registry of agents connected to this replica: their identity and lookback counters,
//! the channel to each one's control stream, and the sample queries in flight to them.
//!
//! A leaf: it knows the wire messages and nothing of captures, the store or the API; the
//! control stream (`control/`) registers agents here, everything else only asks and sends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgecap_common::lock;
use edgecap_proto::agent::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

/// A connected agent, as operators and the sample runner see it.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    /// The agent's id, from its certificate.
    pub agent_id: String,
    /// Its PoP, from its certificate.
    pub pop: String,
    /// The interfaces its lookback captures on.
    pub interfaces: Vec<String>,
    /// Its version (from its Hello).
    pub version: String,
    /// Its lookback keeps 1 packet in this many.
    pub sample_rate: u32,
    /// Its lookback's counters, from the last heartbeat.
    pub lookback: pb::LookbackStats,
    /// Damaged spool entries it set aside (shards it cannot deliver), from the last heartbeat.
    pub spool_damaged: u64,
    /// Its clock against this replica's, from the last heartbeat (`None` until measured).
    pub clock: Option<pb::ClockOffset>,
}

impl AgentInfo {
    /// An agent as its Hello would make it, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(agent_id: &str, pop: &str) -> Self {
        Self {
            agent_id: agent_id.into(),
            pop: pop.into(),
            interfaces: vec![],
            version: String::new(),
            sample_rate: 1,
            lookback: Default::default(),
            spool_damaged: 0,
            clock: None,
        }
    }
}

struct Connection {
    info: AgentInfo,
    conn: u64,
    tx: mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
}

struct Pending {
    agent_id: String,
    tx: mpsc::Sender<pb::SampleChunk>,
    /// Packets the agent may still send for this query (its `packet_limit`).
    room: usize,
}

/// Longest packet a sample answer may carry (the lookback keeps at most 65535 bytes).
const MAX_SAMPLE_PACKET: usize = 65_535;

/// Connected agents and the sample queries in flight to them.
#[derive(Default)]
pub(crate) struct Registry {
    agents: Mutex<HashMap<String, Connection>>,
    pending: Mutex<HashMap<String, Pending>>,
    next_conn: AtomicU64,
}

/// One agent's answer to a sample query.
#[derive(Debug, Default)]
pub(crate) struct SampleAnswer {
    pub packets: Vec<pb::Packet>,
    pub matched: u64,
    pub lookback: pb::LookbackStats,
    /// Packets the filter matched that the account's scope excluded.
    pub excluded: u64,
    /// The agent's clock against its coordinator when it answered.
    pub clock: Option<pb::ClockOffset>,
    /// The most packets the answer may hold (the query's `packet_limit`).
    limit: usize,
}

/// Whether a chunk stays within what was asked: `room` more packets, none longer than a
/// lookback keeps. The reason when it does not.
fn check_chunk(chunk: &pb::SampleChunk, room: usize) -> Result<(), String> {
    if chunk.packets.len() > room {
        return Err(format!("sample answer holds more packets than the {room} still asked for"));
    }
    if let Some(p) = chunk.packets.iter().find(|p| p.data.len() > MAX_SAMPLE_PACKET) {
        return Err(format!("sample answer holds a packet of {} bytes (at most {MAX_SAMPLE_PACKET})", p.data.len()));
    }
    Ok(())
}

impl SampleAnswer {
    /// An empty answer to a query for at most `limit` packets.
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, ..Default::default() }
    }

    /// Adds one chunk of an answer; `Some` once the last chunk is in (`Err` with the agent's
    /// reason when it could not answer, or when the answer holds more than was asked).
    pub(crate) fn absorb(&mut self, chunk: pb::SampleChunk) -> Option<Result<(), String>> {
        if let Err(reason) = check_chunk(&chunk, self.limit.saturating_sub(self.packets.len())) {
            return Some(Err(reason));
        }
        self.packets.extend(chunk.packets);
        if !chunk.done {
            return None;
        }
        if !chunk.error.is_empty() {
            return Some(Err(chunk.error));
        }
        self.matched = chunk.matched;
        self.excluded = chunk.excluded;
        self.clock = chunk.clock;
        self.lookback = chunk.lookback.unwrap_or_default();
        Some(Ok(()))
    }
}

impl Registry {
    pub(crate) fn agents(&self) -> Vec<AgentInfo> {
        let mut out: Vec<AgentInfo> = lock(&self.agents).values().map(|c| c.info.clone()).collect();
        out.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
        out
    }

    /// Whether an agent has its control stream to this replica now.
    pub(crate) fn is_connected(&self, agent_id: &str) -> bool {
        lock(&self.agents).contains_key(agent_id)
    }

    pub(crate) fn register(&self, info: AgentInfo, tx: mpsc::Sender<Result<pb::CoordinatorMessage, Status>>) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let previous = lock(&self.agents).insert(info.agent_id.clone(), Connection { info, conn, tx });
        if let Some(previous) = previous {
            tracing::info!(agent_id = %previous.info.agent_id, "agent reconnected; replacing its previous stream");
        }
        conn
    }

    /// Sends a message to a connected agent; false if it is not connected (or its stream is
    /// closing).
    pub(crate) async fn send(&self, agent_id: &str, message: pb::CoordinatorMessage) -> bool {
        let tx = lock(&self.agents).get(agent_id).map(|c| c.tx.clone());
        match tx {
            Some(tx) => tx.send(Ok(message)).await.is_ok(),
            None => false,
        }
    }

    /// Sends a message to a connected agent without waiting (from synchronous code); false if
    /// it is not connected or its stream's queue is full.
    pub(crate) fn try_send(&self, agent_id: &str, message: pb::CoordinatorMessage) -> bool {
        let tx = lock(&self.agents).get(agent_id).map(|c| c.tx.clone());
        tx.is_some_and(|tx| tx.try_send(Ok(message)).is_ok())
    }

    pub(crate) fn unregister(&self, agent_id: &str, conn: u64) {
        let mut agents = lock(&self.agents);
        if agents.get(agent_id).is_some_and(|c| c.conn == conn) {
            agents.remove(agent_id);
            // Queries waiting on this agent end now (their senders drop).
            lock(&self.pending).retain(|_, p| p.agent_id != agent_id);
        }
    }

    pub(crate) fn update_stats(&self, agent_id: &str, conn: u64, beat: pb::Heartbeat) {
        if let Some(c) = lock(&self.agents).get_mut(agent_id).filter(|c| c.conn == conn) {
            c.info.lookback = beat.lookback.unwrap_or_default();
            c.info.spool_damaged = beat.spool_damaged;
            c.info.clock = beat.clock;
        }
    }

    /// Hands a chunk to the query waiting for it. `Err` (with the reason) when the chunk holds
    /// more than was asked: the query then fails, and the caller cuts the agent off.
    pub(crate) fn route_chunk(&self, agent_id: &str, chunk: pb::SampleChunk) -> Result<(), String> {
        let tx = {
            let mut pending = lock(&self.pending);
            match pending.get_mut(&chunk.request_id) {
                Some(p) if p.agent_id == agent_id => {
                    if let Err(reason) = check_chunk(&chunk, p.room) {
                        pending.remove(&chunk.request_id);
                        return Err(reason);
                    }
                    p.room -= chunk.packets.len();
                    p.tx.clone()
                }
                Some(_) => {
                    tracing::warn!(%agent_id, request_id = %chunk.request_id, "sample chunk from the wrong agent dropped");
                    return Ok(());
                }
                None => return Ok(()), // timed out already
            }
        };
        // A full buffer means the waiter is gone or slow; it has its own timeout.
        let _ = tx.try_send(chunk);
        Ok(())
    }

    /// Asks one agent for its lookback packets; waits up to `timeout` for the whole answer.
    pub(crate) async fn sample(
        &self,
        agent_id: &str,
        mut query: pb::SampleQuery,
        timeout: Duration,
    ) -> Result<SampleAnswer, String> {
        let request_id = crate::model::new_id();
        query.request_id = request_id.clone();
        let (tx, mut rx) = mpsc::channel(256);
        let agent_tx = {
            let agents = lock(&self.agents);
            let conn =
                agents.get(agent_id).ok_or_else(|| "agent disconnected before the query was sent".to_string())?;
            conn.tx.clone()
        };
        let limit = query.packet_limit as usize;
        lock(&self.pending).insert(request_id.clone(), Pending { agent_id: agent_id.to_string(), tx, room: limit });
        let message = pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::SampleQuery(query)) };
        let result = async {
            agent_tx.send(Ok(message)).await.map_err(|_| "agent disconnected before the query was sent".to_string())?;
            let mut answer = SampleAnswer::new(limit);
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let chunk = match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => {
                        return Err("agent disconnected before answering (or answered more than asked)".to_string());
                    }
                    Err(_) => return Err(format!("agent did not answer within {} s", timeout.as_secs())),
                };
                if let Some(done) = answer.absorb(chunk) {
                    return done.map(|()| answer);
                }
            }
        }
        .await;
        lock(&self.pending).remove(&request_id);
        result
    }
}
