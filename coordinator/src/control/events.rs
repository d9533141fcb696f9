//! One agent's session: its messages as typed events, each handed to the part of the
//! coordinator that owns it. Work that waits on the state store or a bucket (progress
//! reports, upload grants, shard commits) runs concurrently, at most [`MAX_IN_FLIGHT`] at a
//! time per agent: a flood from one agent slows that agent's stream down, nobody else's.

use std::sync::Arc;

use edgecap_proto::agent::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::presence::{self, PRESENCE_TTL};
use crate::agents::Registry;
use crate::full::FullCaptures;
use crate::store::{AgentPresence, Repo};

/// Handlers running at once for one agent.
const MAX_IN_FLIGHT: usize = 16;

/// What an agent can say after its Hello.
#[derive(Debug)]
pub(super) enum AgentEvent {
    SampleChunk(pb::SampleChunk),
    Heartbeat(pb::LookbackStats),
    Report(pb::CaptureReport),
    UploadRequest(pb::UploadRequest),
    ShardUploaded(pb::ShardUploaded),
    /// A second Hello: ignored.
    Hello,
}

impl AgentEvent {
    fn from_message(message: pb::AgentMessage) -> Option<Self> {
        Some(match message.msg? {
            pb::agent_message::Msg::SampleChunk(chunk) => AgentEvent::SampleChunk(chunk),
            pb::agent_message::Msg::Heartbeat(hb) => AgentEvent::Heartbeat(hb.lookback.unwrap_or_default()),
            pb::agent_message::Msg::CaptureReport(report) => AgentEvent::Report(report),
            pb::agent_message::Msg::UploadRequest(request) => AgentEvent::UploadRequest(request),
            pb::agent_message::Msg::ShardUploaded(uploaded) => AgentEvent::ShardUploaded(uploaded),
            pb::agent_message::Msg::Hello(_) => AgentEvent::Hello,
        })
    }
}

type Answers = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// A connected agent, from its Hello to the end of its stream.
pub(super) struct Session {
    pub agent_id: String,
    pub pop: String,
    /// This connection's number in the registry (a reconnect replaces it).
    pub conn: u64,
    pub registry: Arc<Registry>,
    pub repo: Repo,
    pub full: Arc<FullCaptures>,
    pub answers: Answers,
}

impl Session {
    /// Serves the stream until it ends or `cancel`; then unregisters the agent and drops its
    /// presence.
    pub(super) async fn run(
        self,
        mut inbound: Streaming<pb::AgentMessage>,
        presence: AgentPresence,
        cancel: CancellationToken,
    ) {
        let lease = presence::publish(&self.repo, &presence).await;
        let mut handlers = JoinSet::new();
        // Jobs written while it was away (or for it before it connected here).
        {
            let (full, agent) = (self.full.clone(), self.agent_id.clone());
            handlers.spawn(async move { full.on_agent_connected(&agent).await });
        }
        let mut keepalive = tokio::time::interval(PRESENCE_TTL / 3);
        keepalive.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        let Some(event) = AgentEvent::from_message(message) else { continue };
                        while handlers.len() >= MAX_IN_FLIGHT {
                            handlers.join_next().await;
                        }
                        self.handle(event, &mut handlers);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(agent_id = %self.agent_id, %status, "control stream ended with an error");
                        break;
                    }
                },
                Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
                _ = keepalive.tick() => {
                    if let Some(lease) = lease
                        && let Err(error) = self.repo.store().keep_alive(lease).await
                    {
                        tracing::warn!(agent_id = %self.agent_id, %error, "agent presence lease not renewed");
                    }
                }
            }
        }
        self.registry.unregister(&self.agent_id, self.conn);
        if let Some(lease) = lease {
            let _ = self.repo.store().revoke_lease(lease).await;
        }
        // Handlers in flight finish (their answers go nowhere now); none is abandoned.
        while handlers.join_next().await.is_some() {}
        tracing::info!(agent_id = %self.agent_id, pop = %self.pop, "agent disconnected");
    }

    fn handle(&self, event: AgentEvent, handlers: &mut JoinSet<()>) {
        match event {
            AgentEvent::SampleChunk(chunk) => self.registry.route_chunk(&self.agent_id, chunk),
            AgentEvent::Heartbeat(stats) => self.registry.update_stats(&self.agent_id, self.conn, stats),
            AgentEvent::Hello => tracing::warn!(agent_id = %self.agent_id, "second Hello ignored"),
            AgentEvent::Report(report) => {
                let (full, agent) = (self.full.clone(), self.agent_id.clone());
                handlers.spawn(async move { full.report(&agent, report).await });
            }
            AgentEvent::UploadRequest(request) => {
                let (full, answers, agent, pop) =
                    (self.full.clone(), self.answers.clone(), self.agent_id.clone(), self.pop.clone());
                handlers.spawn(async move {
                    let grant = full.grant(&agent, &pop, request).await;
                    let msg = pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::UploadGrant(grant)) };
                    let _ = answers.send(Ok(msg)).await;
                });
            }
            AgentEvent::ShardUploaded(uploaded) => {
                let (full, answers, agent, pop) =
                    (self.full.clone(), self.answers.clone(), self.agent_id.clone(), self.pop.clone());
                handlers.spawn(async move {
                    let committed = full.commit(&agent, &pop, uploaded).await;
                    let msg =
                        pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::ShardCommitted(committed)) };
                    let _ = answers.send(Ok(msg)).await;
                });
            }
        }
    }
}
