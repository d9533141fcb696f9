//! One connection to a coordinator: Hello, then every message from the coordinator handed to
//! the part of the agent that owns it (sample answers, full-capture jobs, upload answers),
//! heartbeats and progress reports going up, until the stream ends or the TLS files change.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use edgecap_capture::Lookback;
use edgecap_common::lock;
use edgecap_common::tasks::Tasks;
use edgecap_proto::agent::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, own_identity};
use crate::convert::{self, CaptureState};
use crate::full::Jobs;
use crate::sample::{answer_sample, lookback_stats};

/// The agent's version, sent in its Hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a closing session waits for its sample answers and upload loop.
const SESSION_GRACE: Duration = Duration::from_secs(5);

/// What every session of an agent works with.
pub(crate) struct Parts {
    pub config: AgentConfig,
    pub lookback: Arc<Mutex<Lookback>>,
    pub jobs: Option<Arc<Jobs>>,
    /// Work that outlives a session: captures being started, and waiting for their end.
    pub tasks: Tasks,
    /// Whether a control stream is up (readiness, metrics).
    pub connected: Arc<std::sync::atomic::AtomicBool>,
    /// The clock probes are stamped with (the system's, unless a test skews it).
    pub clock: crate::clock::AgentClock,
    /// The current session's clock estimate against its coordinator (`None` until measured).
    pub offset: Arc<std::sync::Mutex<Option<pb::ClockOffset>>>,
}

fn message(msg: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

/// Dials `endpoint`, says Hello, and serves until the stream ends, the TLS files change or
/// `cancel` (the agent stops). Returns once the session's own work has ended.
pub(crate) async fn session(
    parts: &Parts,
    endpoint: &str,
    tls: &mut watch::Receiver<Arc<rustls::ClientConfig>>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    // Dropping a dial or an unanswered Hello leaves nothing behind.
    let connected = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        connected = open(parts, endpoint, tls) => connected?,
    };
    let (inbound, out_tx) = connected;
    // Sample answers and the upload loop belong to this session and end with it.
    let session_tasks = Tasks::child_of(cancel);
    if let Some(jobs) = &parts.jobs {
        session_tasks.spawn(jobs.clone().upload_loop(out_tx.clone(), session_tasks.token()));
        session_tasks.spawn(jobs.clone().budget_loop(out_tx.clone(), session_tasks.token()));
        session_tasks.spawn(jobs.clone().stream_loop(out_tx.clone(), session_tasks.token()));
    }
    parts.connected.store(true, std::sync::atomic::Ordering::Relaxed);
    let result = serve(parts, inbound, &out_tx, tls, &session_tasks).await;
    parts.connected.store(false, std::sync::atomic::Ordering::Relaxed);
    session_tasks.shutdown(SESSION_GRACE).await;
    result
}

type Opened = (tonic::Streaming<pb::CoordinatorMessage>, mpsc::Sender<pb::AgentMessage>);

async fn open(
    parts: &Parts,
    endpoint: &str,
    tls: &mut watch::Receiver<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Opened> {
    let config = tls.borrow_and_update().clone();
    // The certificate may have been re-issued (new identity): re-read it.
    let (agent_id, pop) = own_identity(&parts.config.tls)?;
    let channel = crate::connection::connect(endpoint, config).await?;
    let mut client = pb::agent_control_client::AgentControlClient::new(channel)
        .max_decoding_message_size(edgecap_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(edgecap_proto::MAX_MESSAGE_BYTES);
    let (out_tx, out_rx) = mpsc::channel::<pb::AgentMessage>(64);
    let hello = pb::Hello {
        agent_id: agent_id.clone(),
        pop: pop.clone(),
        interfaces: parts.config.capture.interfaces.clone(),
        version: VERSION.to_string(),
        sample_rate: parts.config.lookback.sample_rate,
        lookback_snaplen: parts.config.lookback.snaplen,
    };
    out_tx.send(message(pb::agent_message::Msg::Hello(hello))).await?;
    let response =
        client.control(tokio_stream::wrappers::ReceiverStream::new(out_rx)).await.context("open the control stream")?;
    tracing::info!(%endpoint, %agent_id, %pop, "connected to coordinator");
    Ok((response.into_inner(), out_tx))
}

async fn serve(
    parts: &Parts,
    mut inbound: tonic::Streaming<pb::CoordinatorMessage>,
    out_tx: &mpsc::Sender<pb::AgentMessage>,
    tls: &mut watch::Receiver<Arc<rustls::ClientConfig>>,
    session_tasks: &Tasks,
) -> anyhow::Result<()> {
    let mut heartbeat = tokio::time::interval(parts.config.heartbeat);
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    let mut first_progress = true;
    if let Some(jobs) = &parts.jobs {
        jobs.forget_started();
    }
    // Clock probes: eight in the first seconds, then one every five.
    let mut estimator = crate::clock::Estimator::default();
    *lock(&parts.offset) = None;
    let mut probe = tokio::time::interval(Duration::from_millis(250));
    let mut probes = 0u64;
    let cancel = session_tasks.token();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            received = inbound.message() => {
                let Some(received) = received.context("control stream")? else { return Ok(()) };
                match received.msg {
                    Some(pb::coordinator_message::Msg::ClockEcho(echo)) => {
                        estimator.echo(&echo, parts.clock.now_ns());
                        *lock(&parts.offset) = estimator.estimate();
                    }
                    Some(msg) => dispatch(parts, msg, out_tx, session_tasks).await?,
                    None => {}
                }
            }
            _ = probe.tick() => {
                probes += 1;
                let p = estimator.probe(parts.clock);
                out_tx.send(message(pb::agent_message::Msg::ClockProbe(p))).await.context("send clock probe")?;
                if probes == 8 {
                    // The timer itself slows down (it had woken every 250 ms to send one
                    // probe in twenty).
                    let every = Duration::from_secs(5);
                    probe = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                }
            }
            () = async {
                match &parts.jobs {
                    Some(jobs) => jobs.report_now.notified().await,
                    None => std::future::pending().await,
                }
            } => progress.reset_immediately(),
            () = async {
                match &parts.jobs {
                    Some(jobs) => jobs.started_now.notified().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(jobs) = &parts.jobs {
                    send_reports(parts, out_tx, jobs.started_reports()).await?;
                }
            }
            _ = progress.tick() => {
                if let Some(jobs) = &parts.jobs {
                    let all = std::mem::take(&mut first_progress);
                    let jobs = jobs.clone();
                    let reports = tokio::task::spawn_blocking(move || jobs.reports(all)).await.unwrap_or_default();
                    send_reports(parts, out_tx, reports).await?;
                }
            }
            _ = heartbeat.tick() => {
                let stats = lookback_stats(&parts.lookback);
                let spool_damaged = parts.jobs.as_ref().map_or(0, |j| j.damaged_entries());
                let beat = pb::Heartbeat { lookback: Some(stats), spool_damaged, clock: *lock(&parts.offset) };
                out_tx.send(message(pb::agent_message::Msg::Heartbeat(beat))).await.context("send heartbeat")?;
            }
            changed = tls.changed() => {
                changed.context("tls watcher ended")?;
                tracing::info!("tls files changed; reconnecting with the new certificate");
                return Ok(());
            }
        }
    }
}

/// Sends captures' reports, stamped with the clock's offset as now estimated.
async fn send_reports(
    parts: &Parts,
    out_tx: &mpsc::Sender<pb::AgentMessage>,
    reports: Vec<pb::CaptureReport>,
) -> anyhow::Result<()> {
    let clock = *lock(&parts.offset);
    for mut report in reports {
        report.clock = clock;
        out_tx.send(message(pb::agent_message::Msg::CaptureReport(report))).await?;
    }
    Ok(())
}

/// Hands one message from the coordinator to its owner.
async fn dispatch(
    parts: &Parts,
    msg: pb::coordinator_message::Msg,
    out_tx: &mpsc::Sender<pb::AgentMessage>,
    session_tasks: &Tasks,
) -> anyhow::Result<()> {
    use pb::coordinator_message::Msg;
    match msg {
        Msg::Welcome(w) => tracing::debug!(coordinator = %w.coordinator_id, "welcomed"),
        // Taken by the session loop before dispatch.
        Msg::ClockEcho(_) => {}
        Msg::SampleQuery(query) => {
            let (lookback, out_tx, offset) = (parts.lookback.clone(), out_tx.clone(), parts.offset.clone());
            let tasks = session_tasks.clone();
            session_tasks.spawn(async move {
                let mut chunks =
                    tasks.spawn_blocking(move || answer_sample(&lookback, query)).await.unwrap_or_default();
                if let Some(last) = chunks.last_mut() {
                    last.clock = *lock(&offset);
                }
                for chunk in chunks {
                    if out_tx.send(message(pb::agent_message::Msg::SampleChunk(chunk))).await.is_err() {
                        return;
                    }
                }
            });
        }
        Msg::StartCapture(start) => match &parts.jobs {
            Some(jobs) => {
                // The steps of a capture's start, for `bench/scale.py full --timeline`.
                tracing::debug!(target: "edgecap_timeline", capture = %start.capture_id, pop = %jobs.pop(), "start received");
                let jobs = jobs.clone();
                parts.tasks.spawn(jobs.start(start));
            }
            None => {
                let mut report = pb::CaptureReport {
                    capture_id: start.capture_id,
                    error: "this agent is not configured for full captures (no --spool-dir)".into(),
                    ..Default::default()
                };
                convert::set_state(&mut report, CaptureState::Failed);
                out_tx.send(message(pb::agent_message::Msg::CaptureReport(report))).await?;
            }
        },
        Msg::StopCapture(stop) => {
            if let Some(jobs) = &parts.jobs {
                jobs.stop(&stop.capture_id);
            }
        }
        Msg::StreamControl(control) => {
            if let Some(jobs) = &parts.jobs {
                jobs.set_streaming(&control.capture_id, control.on);
            }
        }
        Msg::UploadGrant(grant) => {
            if let Some(jobs) = &parts.jobs {
                let id = grant.request_id.clone();
                jobs.deliver(&id, Msg::UploadGrant(grant));
            }
        }
        Msg::BudgetGrant(grant) => {
            if let Some(jobs) = &parts.jobs {
                let id = grant.request_id.clone();
                jobs.deliver(&id, Msg::BudgetGrant(grant));
            }
        }
        Msg::ShardCommitted(committed) => {
            if let Some(jobs) = &parts.jobs {
                let id = committed.request_id.clone();
                jobs.deliver(&id, Msg::ShardCommitted(committed));
            }
        }
    }
    Ok(())
}
