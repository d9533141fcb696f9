//! The agent control plane: the `AgentControl.Control` stream and the registry of connected
//! agents.
//!
//! An agent's identity (id, PoP) comes from its verified client certificate only. Its Hello
//! must repeat that identity; a mismatch (an agent of PoP A claiming PoP B) is refused with
//! PERMISSION_DENIED before anything is registered.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecap_proto::agent::v1 as pb;
use edgecap_tls::PeerIdentity;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::repo::{AgentPresence, Repo};
use crate::tls_listener::PeerInfo;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const PRESENCE_TTL: Duration = Duration::from_secs(15);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// A connected agent, as operators and the sample runner see it.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub agent_id: String,
    pub pop: String,
    pub interfaces: Vec<String>,
    pub version: String,
    pub sample_rate: u32,
    pub lookback: pb::LookbackStats,
}

struct Connection {
    info: AgentInfo,
    conn: u64,
    tx: mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
}

struct Pending {
    agent_id: String,
    tx: mpsc::Sender<pb::SampleChunk>,
}

/// Connected agents and the sample queries in flight to them.
#[derive(Default)]
pub struct Registry {
    agents: Mutex<HashMap<String, Connection>>,
    pending: Mutex<HashMap<String, Pending>>,
    next_conn: AtomicU64,
}

/// One agent's answer to a sample query.
#[derive(Debug, Default)]
pub struct SampleAnswer {
    pub packets: Vec<pb::Packet>,
    pub matched: u64,
    pub lookback: pb::LookbackStats,
}

impl SampleAnswer {
    /// Adds one chunk of an answer; `Some` once the last chunk is in (`Err` with the agent's
    /// reason when it could not answer).
    pub fn absorb(&mut self, chunk: pb::SampleChunk) -> Option<Result<(), String>> {
        self.packets.extend(chunk.packets);
        if !chunk.done {
            return None;
        }
        if !chunk.error.is_empty() {
            return Some(Err(chunk.error));
        }
        self.matched = chunk.matched;
        self.lookback = chunk.lookback.unwrap_or_default();
        Some(Ok(()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    pub fn agents(&self) -> Vec<AgentInfo> {
        let mut out: Vec<AgentInfo> = lock(&self.agents).values().map(|c| c.info.clone()).collect();
        out.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
        out
    }

    /// Whether an agent has its control stream to this replica now.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        lock(&self.agents).contains_key(agent_id)
    }

    fn register(&self, info: AgentInfo, tx: mpsc::Sender<Result<pb::CoordinatorMessage, Status>>) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let previous = lock(&self.agents).insert(info.agent_id.clone(), Connection { info, conn, tx });
        if let Some(previous) = previous {
            tracing::info!(agent_id = %previous.info.agent_id, "agent reconnected; replacing its previous stream");
        }
        conn
    }

    /// Sends a message to a connected agent; false if it is not connected (or its stream is
    /// closing).
    pub async fn send(&self, agent_id: &str, message: pb::CoordinatorMessage) -> bool {
        let tx = lock(&self.agents).get(agent_id).map(|c| c.tx.clone());
        match tx {
            Some(tx) => tx.send(Ok(message)).await.is_ok(),
            None => false,
        }
    }

    fn unregister(&self, agent_id: &str, conn: u64) {
        let mut agents = lock(&self.agents);
        if agents.get(agent_id).is_some_and(|c| c.conn == conn) {
            agents.remove(agent_id);
            // Queries waiting on this agent end now (their senders drop).
            lock(&self.pending).retain(|_, p| p.agent_id != agent_id);
        }
    }

    fn update_stats(&self, agent_id: &str, conn: u64, stats: pb::LookbackStats) {
        if let Some(c) = lock(&self.agents).get_mut(agent_id).filter(|c| c.conn == conn) {
            c.info.lookback = stats;
        }
    }

    fn route_chunk(&self, agent_id: &str, chunk: pb::SampleChunk) {
        let tx = {
            let pending = lock(&self.pending);
            match pending.get(&chunk.request_id) {
                Some(p) if p.agent_id == agent_id => p.tx.clone(),
                Some(_) => {
                    tracing::warn!(%agent_id, request_id = %chunk.request_id, "sample chunk from the wrong agent dropped");
                    return;
                }
                None => return, // timed out already
            }
        };
        // A full buffer means the waiter is gone or slow; it has its own timeout.
        let _ = tx.try_send(chunk);
    }

    /// Asks one agent for its lookback packets; waits up to `timeout` for the whole answer.
    pub async fn sample(
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
        lock(&self.pending).insert(request_id.clone(), Pending { agent_id: agent_id.to_string(), tx });
        let message = pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::SampleQuery(query)) };
        let result = async {
            agent_tx.send(Ok(message)).await.map_err(|_| "agent disconnected before the query was sent".to_string())?;
            let mut answer = SampleAnswer::default();
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let chunk = match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => return Err("agent disconnected before answering".to_string()),
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

pub struct ControlService {
    pub registry: Arc<Registry>,
    pub repo: Repo,
    pub coordinator_name: String,
    pub full: Arc<crate::full::FullCaptures>,
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_control_server::AgentControl for ControlService {
    type ControlStream = ControlStream;

    async fn control(&self, request: Request<Streaming<pb::AgentMessage>>) -> Result<Response<ControlStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no verified client certificate"))?;
        let (cert_agent, cert_pop) = match &peer.identity {
            Ok(PeerIdentity::Agent { agent_id, pop }) => (agent_id.clone(), pop.clone()),
            Ok(other) => {
                return Err(Status::permission_denied(format!("certificate identity {other:?} is not an agent")));
            }
            Err(why) => return Err(Status::permission_denied(format!("client certificate: {why}"))),
        };
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??;
        let Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message on the control stream must be Hello"));
        };
        if hello.agent_id != cert_agent || hello.pop != cert_pop {
            tracing::warn!(remote = %peer.remote, %cert_agent, %cert_pop, claimed_agent = %hello.agent_id,
                claimed_pop = %hello.pop, "agent refused: hello does not match its certificate");
            return Err(Status::permission_denied(format!(
                "certificate is for agent {cert_agent:?} in PoP {cert_pop:?}; it cannot act as agent {:?} in PoP {:?}",
                hello.agent_id, hello.pop
            )));
        }
        let info = AgentInfo {
            agent_id: cert_agent.clone(),
            pop: cert_pop.clone(),
            interfaces: hello.interfaces.clone(),
            version: hello.version.clone(),
            sample_rate: hello.sample_rate,
            lookback: pb::LookbackStats::default(),
        };
        let (tx, rx) = mpsc::channel(64);
        let welcome = pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Welcome(pb::Welcome {
                coordinator_id: self.coordinator_name.clone(),
                heartbeat_interval_ms: HEARTBEAT_INTERVAL.as_millis() as u32,
            })),
        };
        tx.send(Ok(welcome)).await.map_err(|_| Status::internal("stream closed"))?;
        let answers = tx.clone();
        let conn = self.registry.register(info, tx);
        tracing::info!(agent_id = %cert_agent, pop = %cert_pop, remote = %peer.remote,
            interfaces = ?hello.interfaces, version = %hello.version, "agent connected");

        let registry = self.registry.clone();
        let repo = self.repo.clone();
        let full = self.full.clone();
        let presence = AgentPresence {
            agent_id: cert_agent.clone(),
            pop: cert_pop.clone(),
            interfaces: hello.interfaces,
            version: hello.version,
            coordinator: self.coordinator_name.clone(),
            connected_at: crate::model::rfc3339(time::OffsetDateTime::now_utc()),
            sample_rate: hello.sample_rate,
        };
        tokio::spawn(async move {
            let lease = publish_presence(&repo, &presence).await;
            // Jobs written while it was away (or for it before it connected here).
            {
                let (full, agent) = (full.clone(), cert_agent.clone());
                tokio::spawn(async move { full.on_agent_connected(&agent).await });
            }
            let mut keepalive = tokio::time::interval(PRESENCE_TTL / 3);
            keepalive.tick().await;
            loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(pb::AgentMessage { msg: Some(msg) })) => match msg {
                            pb::agent_message::Msg::SampleChunk(chunk) => registry.route_chunk(&cert_agent, chunk),
                            pb::agent_message::Msg::Heartbeat(hb) => {
                                registry.update_stats(&cert_agent, conn, hb.lookback.unwrap_or_default());
                            }
                            pb::agent_message::Msg::Hello(_) => {
                                tracing::warn!(agent_id = %cert_agent, "second Hello ignored");
                            }
                            pb::agent_message::Msg::CaptureReport(report) => {
                                let (full, agent) = (full.clone(), cert_agent.clone());
                                tokio::spawn(async move { full.report(&agent, report).await });
                            }
                            pb::agent_message::Msg::UploadRequest(request) => {
                                let (full, answers, agent, pop) = (full.clone(), answers.clone(), cert_agent.clone(), cert_pop.clone());
                                tokio::spawn(async move {
                                    let grant = full.grant(&agent, &pop, request).await;
                                    let msg = pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::UploadGrant(grant)) };
                                    let _ = answers.send(Ok(msg)).await;
                                });
                            }
                            pb::agent_message::Msg::ShardUploaded(uploaded) => {
                                let (full, answers, agent, pop) =
                                    (full.clone(), answers.clone(), cert_agent.clone(), cert_pop.clone());
                                tokio::spawn(async move {
                                    let committed = full.commit(&agent, &pop, uploaded).await;
                                    let msg = pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::ShardCommitted(committed)) };
                                    let _ = answers.send(Ok(msg)).await;
                                });
                            }
                        },
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(status) => {
                            tracing::info!(agent_id = %cert_agent, %status, "control stream ended with an error");
                            break;
                        }
                    },
                    _ = keepalive.tick() => {
                        if let Some(lease) = lease
                            && let Err(error) = repo.store().keep_alive(lease).await
                        {
                            tracing::warn!(agent_id = %cert_agent, %error, "agent presence lease not renewed");
                        }
                    }
                }
            }
            registry.unregister(&cert_agent, conn);
            if let Some(lease) = lease {
                let _ = repo.store().revoke_lease(lease).await;
            }
            tracing::info!(agent_id = %cert_agent, pop = %cert_pop, "agent disconnected");
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }
}

async fn publish_presence(repo: &Repo, presence: &AgentPresence) -> Option<edgecap_state::LeaseId> {
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
