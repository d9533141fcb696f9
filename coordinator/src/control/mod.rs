//! The agent control plane: the `AgentControl.Control` stream, as a thin adapter. It checks
//! who is calling (the verified certificate, then a Hello that must agree with it), registers
//! the agent, and turns each message into a typed [`events::AgentEvent`] for the handlers
//! (`agents` registry, `full` captures). Presence in the state store: [`presence`]. TLS with
//! hot reload below tonic: [`tls_listener`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use edgecap_common::tasks::Tasks;
use edgecap_proto::agent::v1 as pb;
use edgecap_tls::PeerIdentity;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::agents::{AgentInfo, Registry};
use crate::enroll::Enrollment;
use crate::full::FullCaptures;
use crate::store::AgentPresence;

mod events;
pub(crate) mod presence;
pub(crate) mod tls_listener;

use tls_listener::PeerInfo;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// The tonic service; one per replica.
pub(crate) struct ControlService {
    pub registry: Arc<Registry>,
    /// The presence keys of the agents connected here, on one lease.
    pub presences: Arc<presence::Presences>,
    pub coordinator_name: String,
    pub full: Arc<FullCaptures>,
    /// Signs enrolling agents' certificates.
    pub enrollment: Arc<Enrollment>,
    /// Every connection's session runs as one of these.
    pub tasks: Tasks,
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_control_server::AgentControl for ControlService {
    type ControlStream = ControlStream;

    async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let identity = peer.as_ref().and_then(PeerInfo::verified);
        if let Some(identity @ PeerIdentity::Coordinator { .. }) = identity {
            return Err(Status::permission_denied(format!("certificate identity {identity:?} is not an agent")));
        }
        self.enrollment.enroll(identity, request.get_ref()).await.map(Response::new)
    }

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
        let oversized =
            hello.interfaces.len() > 64 || hello.interfaces.iter().any(|i| i.len() > 64) || hello.version.len() > 64;
        if oversized {
            return Err(Status::invalid_argument(
                "Hello: at most 64 interfaces, names and version of at most 64 bytes",
            ));
        }
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
            spool_damaged: 0,
            clock: None,
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
        let presence = AgentPresence {
            agent_id: cert_agent.clone(),
            pop: cert_pop.clone(),
            interfaces: hello.interfaces,
            version: hello.version,
            coordinator: self.coordinator_name.clone(),
            connected_at: crate::model::rfc3339(time::OffsetDateTime::now_utc()),
            sample_rate: hello.sample_rate,
            announced: true,
            relay_batches: true,
        };
        let session = events::Session {
            agent_id: cert_agent,
            pop: cert_pop,
            conn,
            registry: self.registry.clone(),
            presences: self.presences.clone(),
            full: self.full.clone(),
            answers,
            serial: peer.serial.clone(),
            revoked: self.enrollment.revoked(),
        };
        self.tasks.spawn(session.run(inbound, presence, self.tasks.token()));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }
}
