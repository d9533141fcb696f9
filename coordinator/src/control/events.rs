//! One agent's session: its messages as typed events, each handed to the part of the
//! coordinator that owns it. Work that waits on the state store or a bucket (progress
//! reports, upload grants, shard commits) runs concurrently, at most [`MAX_IN_FLIGHT`] at a
//! time per agent: a flood from one agent slows that agent's stream down, nobody else's.
//!
//! What an agent sends is bounded: strings ([`check`]), sample answers (no more packets than
//! asked, see `agents/`), and the message rate ([`RateGuard`]). An agent past a bound is cut
//! off with the reason (logged, and sent as the stream's final status); the others are not
//! affected.

use std::sync::Arc;

use edgecap_proto::agent::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::presence::{PRESENCE_TTL, Presences};
use crate::agents::Registry;
use crate::enroll::Revoked;
use crate::full::FullCaptures;
use crate::store::AgentPresence;

/// Handlers running at once for one agent.
const MAX_IN_FLIGHT: usize = 16;
/// Messages per second an agent may send, sustained ...
const RATE_PER_SECOND: f64 = 200.0;
/// ... and in a burst.
const RATE_BURST: f64 = 2000.0;
/// Longest id (capture, request) an agent may send.
const MAX_ID: usize = 64;
/// Packets in one StreamPackets message at most (agents send at most 1 MiB of packet data).
const MAX_STREAM_PACKETS: usize = 65_536;
/// Longest free text (an error, a filter) an agent may send.
const MAX_TEXT: usize = 4096;
/// Longest object key or upload id.
const MAX_KEY: usize = 1024;
/// Most parts of a multipart upload (S3's own limit).
const MAX_PARTS: usize = 10_000;
/// Longest CRC32C text (S3's base64 form is 8 characters).
const MAX_CRC: usize = 16;

/// A token bucket over an agent's messages.
pub(super) struct RateGuard {
    tokens: f64,
    last: tokio::time::Instant,
}

impl RateGuard {
    pub(super) fn new() -> Self {
        Self { tokens: RATE_BURST, last: tokio::time::Instant::now() }
    }

    /// Takes one message; `Err` when the agent sends faster than allowed.
    pub(super) fn take(&mut self) -> Result<(), String> {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + (now - self.last).as_secs_f64() * RATE_PER_SECOND).min(RATE_BURST);
        self.last = now;
        if self.tokens < 1.0 {
            return Err(format!("sends more than {RATE_PER_SECOND} messages per second"));
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// A shard's CRC32C fields: short, and no more parts than an upload can have.
fn checksums(whole: &str, parts: &[String]) -> Result<(), String> {
    bounded("shard crc32c", whole, MAX_CRC)?;
    if parts.len() > MAX_PARTS {
        return Err(format!("{} part checksums (at most {MAX_PARTS})", parts.len()));
    }
    parts.iter().try_for_each(|p| bounded("part crc32c", p, MAX_CRC))
}

fn bounded(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!("{what} of {} bytes (at most {max})", text.len()));
    }
    Ok(())
}

/// Whether an event's strings and lists are within bounds; the reason when not.
pub(super) fn check(event: &AgentEvent) -> Result<(), String> {
    match event {
        AgentEvent::SampleChunk(c) => {
            bounded("sample request id", &c.request_id, MAX_ID)?;
            bounded("sample error", &c.error, MAX_TEXT)?;
            c.packets.iter().try_for_each(|p| bounded("packet interface name", &p.interface, MAX_ID))
        }
        AgentEvent::Heartbeat(_) | AgentEvent::Hello | AgentEvent::ClockProbe(..) => Ok(()),
        AgentEvent::StreamPackets(s) => {
            bounded("stream capture id", &s.capture_id, MAX_ID)?;
            bounded("stream interface name", &s.interface, MAX_ID)?;
            if s.packets.len() > MAX_STREAM_PACKETS || s.snaplen > edgecap_capture::source::MAX_SNAPLEN {
                return Err(format!("stream message of {} packets (snaplen {})", s.packets.len(), s.snaplen));
            }
            match s.packets.iter().find(|p| p.data.len() > edgecap_capture::source::MAX_SNAPLEN as usize) {
                Some(p) => Err(format!("stream packet of {} bytes", p.data.len())),
                None => Ok(()),
            }
        }
        AgentEvent::BudgetRequest(r) => {
            bounded("budget request id", &r.request_id, MAX_ID)?;
            bounded("budget capture id", &r.capture_id, MAX_ID)
        }
        AgentEvent::Report(r) => {
            bounded("report capture id", &r.capture_id, MAX_ID)?;
            bounded("report state", &r.state, MAX_ID)?;
            bounded("report stop reason", &r.stop_reason, MAX_ID)?;
            bounded("report error", &r.error, MAX_TEXT)
        }
        AgentEvent::UploadRequest(u) => {
            bounded("upload request id", &u.request_id, MAX_ID)?;
            bounded("upload capture id", &u.capture_id, MAX_ID)?;
            bounded("shard name", &u.shard, MAX_ID * 2)?;
            checksums(&u.crc32c, &u.part_crc32c)
        }
        AgentEvent::ShardUploaded(u) => {
            bounded("upload request id", &u.request_id, MAX_ID)?;
            bounded("upload capture id", &u.capture_id, MAX_ID)?;
            bounded("shard name", &u.shard, MAX_ID * 2)?;
            bounded("shard key", &u.key, MAX_KEY)?;
            bounded("upload id", &u.upload_id, MAX_KEY)?;
            bounded("shard checksum", &u.sha256, MAX_ID * 2)?;
            bounded("shard interface", &u.interface, MAX_ID)?;
            bounded("shard filter", &u.filter, MAX_TEXT)?;
            if u.part_etags.len() > MAX_PARTS {
                return Err(format!("{} part ETags (at most {MAX_PARTS})", u.part_etags.len()));
            }
            u.part_etags.iter().try_for_each(|e| bounded("part ETag", e, MAX_ID * 2))?;
            checksums(&u.crc32c, &u.part_crc32c)
        }
    }
}

/// What an agent can say after its Hello.
#[derive(Debug)]
pub(super) enum AgentEvent {
    SampleChunk(pb::SampleChunk),
    Heartbeat(pb::Heartbeat),
    Report(pb::CaptureReport),
    UploadRequest(pb::UploadRequest),
    ShardUploaded(pb::ShardUploaded),
    BudgetRequest(pb::BudgetRequest),
    StreamPackets(pb::StreamPackets),
    /// A clock probe, with the time it was received (the echo's t2).
    ClockProbe(pb::ClockProbe, u64),
    /// A second Hello: ignored.
    Hello,
}

impl AgentEvent {
    fn from_message(message: pb::AgentMessage) -> Option<Self> {
        Some(match message.msg? {
            pb::agent_message::Msg::SampleChunk(chunk) => AgentEvent::SampleChunk(chunk),
            pb::agent_message::Msg::Heartbeat(hb) => AgentEvent::Heartbeat(hb),
            pb::agent_message::Msg::CaptureReport(report) => AgentEvent::Report(report),
            pb::agent_message::Msg::UploadRequest(request) => AgentEvent::UploadRequest(request),
            pb::agent_message::Msg::ShardUploaded(uploaded) => AgentEvent::ShardUploaded(uploaded),
            pb::agent_message::Msg::Hello(_) => AgentEvent::Hello,
            pb::agent_message::Msg::BudgetRequest(request) => AgentEvent::BudgetRequest(request),
            pb::agent_message::Msg::StreamPackets(packets) => AgentEvent::StreamPackets(packets),
            pb::agent_message::Msg::ClockProbe(p) => AgentEvent::ClockProbe(p, edgecap_common::now_ns()),
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
    pub presences: Arc<Presences>,
    pub full: Arc<FullCaptures>,
    pub answers: Answers,
    /// The serial of the certificate it connected with, and the revoked serials: a session
    /// whose certificate is revoked ends within a keepalive interval.
    pub serial: Option<String>,
    pub revoked: Revoked,
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
        self.presences.publish(self.conn, presence).await;
        let mut handlers = JoinSet::new();
        // Jobs written while it was away (or for it before it connected here).
        {
            let (full, agent) = (self.full.clone(), self.agent_id.clone());
            handlers.spawn(async move { full.on_agent_connected(&agent).await });
        }
        let mut keepalive = tokio::time::interval(PRESENCE_TTL / 3);
        keepalive.tick().await;
        let mut rate = RateGuard::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        let Some(event) = AgentEvent::from_message(message) else { continue };
                        // Stream copies are paced by the agent (only while the stream has
                        // room) and bounded by bytes: they do not count against the rate.
                        let rated = if matches!(event, AgentEvent::StreamPackets(_)) { Ok(()) } else { rate.take() };
                        let accepted = rated.and_then(|()| check(&event));
                        while handlers.len() >= MAX_IN_FLIGHT {
                            handlers.join_next().await;
                        }
                        if let Err(reason) = accepted.and_then(|()| self.handle(event, &mut handlers)) {
                            self.cut_off(&reason).await;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(agent_id = %self.agent_id, %status, "control stream ended with an error");
                        break;
                    }
                },
                Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
                _ = keepalive.tick() => {
                    if self.serial.as_ref().is_some_and(|s| self.revoked.contains(s)) {
                        self.cut_off("its certificate was revoked").await;
                        break;
                    }
                }
            }
        }
        self.registry.unregister(&self.agent_id, self.conn);
        self.presences.withdraw(&self.agent_id, self.conn).await;
        // Handlers in flight finish (their answers go nowhere now); none is abandoned.
        while handlers.join_next().await.is_some() {}
        tracing::info!(agent_id = %self.agent_id, pop = %self.pop, "agent disconnected");
    }

    /// Ends the session because the agent broke a bound: the reason is logged and sent as the
    /// stream's final status.
    async fn cut_off(&self, reason: &str) {
        tracing::warn!(agent_id = %self.agent_id, pop = %self.pop, %reason, "agent cut off");
        let status = Status::resource_exhausted(format!("disconnected by the coordinator: {reason}"));
        let _ = self.answers.send(Err(status)).await;
    }

    fn handle(&self, event: AgentEvent, handlers: &mut JoinSet<()>) -> Result<(), String> {
        match event {
            AgentEvent::SampleChunk(chunk) => return self.registry.route_chunk(&self.agent_id, chunk),
            AgentEvent::Heartbeat(beat) => self.registry.update_stats(&self.agent_id, self.conn, beat),
            AgentEvent::Hello => tracing::warn!(agent_id = %self.agent_id, "second Hello ignored"),
            AgentEvent::ClockProbe(probe, t2_ns) => {
                // Answered at once, never queued behind other work: the delay is the estimate's
                // uncertainty. A full queue drops the probe (the agent sends more).
                let echo = pb::ClockEcho { seq: probe.seq, t1_ns: probe.t1_ns, t2_ns, t3_ns: edgecap_common::now_ns() };
                let msg = pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::ClockEcho(echo)) };
                let _ = self.answers.try_send(Ok(msg));
            }
            AgentEvent::Report(report) => self.full.report(&self.agent_id, report),
            AgentEvent::UploadRequest(request) => {
                let (full, answers, agent, pop) =
                    (self.full.clone(), self.answers.clone(), self.agent_id.clone(), self.pop.clone());
                handlers.spawn(async move {
                    let grant = full.grant(&agent, &pop, request).await;
                    let msg = pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::UploadGrant(grant)) };
                    let _ = answers.send(Ok(msg)).await;
                });
            }
            AgentEvent::StreamPackets(packets) => self.full.publish_stream(&self.pop, &self.agent_id, packets),
            AgentEvent::BudgetRequest(request) => {
                let (full, answers, agent) = (self.full.clone(), self.answers.clone(), self.agent_id.clone());
                handlers.spawn(async move {
                    let grant = full.grant_budget(&agent, request).await;
                    let msg = pb::CoordinatorMessage { msg: Some(pb::coordinator_message::Msg::BudgetGrant(grant)) };
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
        Ok(())
    }
}
