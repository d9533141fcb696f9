//! The fan-out of one sample capture: every present agent is asked for its lookback window
//! (directly when it is connected here, relayed through the state store otherwise), the
//! answers are merged by timestamp and cut to the newest `packet_limit`.

use std::time::Duration;

use edgecap_merge::{Timestamped, merge_sorted};
use edgecap_proto::agent::v1 as pb;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{NO_PACKETS, SampleCaptures};
use crate::convert::filter_to_pb;
use crate::model::{CaptureRecord, CaptureStatus, PopResult, PopStatus};

/// Snap length of sample files (the lookback's default truncation).
const SAMPLE_SNAPLEN: u32 = 160;

pub(super) struct Tagged {
    source: usize,
    pub(super) packet: pb::Packet,
}

impl Timestamped for Tagged {
    fn ts_ns(&self) -> u64 {
        self.packet.ts_ns
    }
}

/// The outcome to record.
pub(super) struct Outcome {
    pub status: CaptureStatus,
    pub packets: u64,
    pub pops: Vec<PopResult>,
    pub error: Option<String>,
    pub object_key: Option<String>,
}

fn failed(error: String, pops: Vec<PopResult>) -> Outcome {
    Outcome { status: CaptureStatus::Failed, packets: 0, pops, error: Some(error), object_key: None }
}

fn window(record: &CaptureRecord) -> Result<(u64, u64), String> {
    let offset = record.offset_time.as_deref().ok_or("offset_time missing")?;
    let end = time::OffsetDateTime::parse(offset, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("offset_time: {e}"))?;
    let end_ns = u64::try_from(end.unix_timestamp_nanos()).map_err(|_| "offset_time before 1970".to_string())?;
    Ok((end_ns.saturating_sub(record.time_limit * 1_000_000_000), end_ns))
}

/// An agent a sample capture asks: connected here, or (relayed through the state store) to
/// another replica.
pub(super) struct Target {
    pub agent_id: String,
    pub pop: String,
    pub sample_rate: u32,
    pub kernel_dropped: u64,
    pub reach: Reach,
}

/// How a sample query reaches an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reach {
    /// Connected to this replica: asked on its control stream.
    Here,
    /// On another replica that reads batches: one relayed query for all of them.
    Batch,
    /// On a replica of an earlier version: one relayed query per agent.
    Single,
}

/// Asks every agent in `agents` (the answers in the same order).
pub(super) async fn ask(
    samples: &SampleCaptures,
    agents: &[Target],
    query: &pb::SampleQuery,
) -> Vec<Result<crate::agents::SampleAnswer, String>> {
    let batched: Vec<&str> = agents.iter().filter(|a| a.reach == Reach::Batch).map(|a| a.agent_id.as_str()).collect();
    let each = join_all(agents.iter().map(|a| {
        let query = query.clone();
        async move {
            match a.reach {
                Reach::Here => samples.registry.sample(&a.agent_id, query, samples.timeout).await,
                Reach::Single => samples.relay.sample(&a.agent_id, query, samples.timeout).await,
                // Filled in from the batch below.
                Reach::Batch => Err(String::new()),
            }
        }
    }));
    let batch = samples.relay.sample_many(&batched, query.clone(), samples.timeout);
    let (mut answers, batch) = futures::future::join(each, batch).await;
    let mut batch = batch.into_iter();
    for (answer, agent) in answers.iter_mut().zip(agents) {
        if agent.reach == Reach::Batch {
            *answer = batch.next().unwrap_or_else(|| Err("no answer in the relayed batch".into()));
        }
    }
    answers
}

/// Every present agent: those connected here from the registry, the others from the shared
/// presence keys. With the state store unreachable, the local ones only.
pub(super) async fn targets(samples: &SampleCaptures) -> Vec<Target> {
    let mut out: Vec<Target> = samples
        .registry
        .agents()
        .into_iter()
        .map(|a| Target {
            agent_id: a.agent_id,
            pop: a.pop,
            sample_rate: a.sample_rate,
            kernel_dropped: a.lookback.kernel_dropped,
            reach: Reach::Here,
        })
        .collect();
    if let Ok(present) = samples.repo.list_agents().await {
        for p in present {
            if out.iter().all(|t| t.agent_id != p.agent_id) {
                out.push(Target {
                    agent_id: p.agent_id,
                    pop: p.pop,
                    sample_rate: p.sample_rate,
                    kernel_dropped: 0,
                    reach: if p.relay_batches { Reach::Batch } else { Reach::Single },
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
    out
}

/// Runs the capture; `None` if `cancel` fired while agents were being asked.
pub(super) async fn execute(
    samples: &SampleCaptures,
    record: &CaptureRecord,
    cancel: &CancellationToken,
) -> Option<Outcome> {
    let (from_ns, to_ns) = match window(record) {
        Ok(w) => w,
        Err(e) => return Some(failed(e, vec![])),
    };
    let limit = record.packet_limit.unwrap_or(samples.packet_limit_max);
    // Just after a restart agents may still be reconnecting. Only the PoPs of the account's
    // scope are asked.
    let scope = record.capture_scope();
    let targets =
        || async { targets(samples).await.into_iter().filter(|t| scope.pop_allowed(&t.pop)).collect::<Vec<_>>() };
    let mut agents = targets().await;
    let wait_until = tokio::time::Instant::now() + samples.agent_wait;
    while agents.is_empty() && tokio::time::Instant::now() < wait_until {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        agents = targets().await;
    }
    if agents.is_empty() {
        let reason = "no agent is connected: sample captures read the lookback of connected agents";
        return Some(failed(reason.into(), vec![]));
    }
    let query = pb::SampleQuery {
        request_id: String::new(),
        from_ns,
        to_ns,
        filter: Some(filter_to_pb(&record.filter_v1)),
        packet_limit: limit as u32,
        filter_bpf: record.filter_bpf.clone().unwrap_or_default(),
        filter_bpf_hash: record.filter_bpf_hash.clone().unwrap_or_default(),
        scope: Some(crate::convert::scope_to_pb(&record.capture_scope())),
        // The sample_capture span: the agents' lookback queries join the capture's trace.
        traceparent: edgecap_telemetry::traceparent(),
    };
    let asked = ask(samples, &agents, &query);
    let answers = tokio::select! {
        _ = cancel.cancelled() => return None,
        answers = asked => answers,
    };
    Some(assemble(samples, record, &agents, answers, limit).await)
}

async fn assemble(
    samples: &SampleCaptures,
    record: &CaptureRecord,
    agents: &[Target],
    answers: Vec<Result<crate::agents::SampleAnswer, String>>,
    limit: u64,
) -> Outcome {
    let mut pops = Vec::new();
    let mut inputs = Vec::new();
    let mut failures = Vec::new();
    for (index, (agent, answer)) in agents.iter().zip(answers).enumerate() {
        let mut pop = PopResult {
            sample_rate: agent.sample_rate,
            kernel_dropped: agent.kernel_dropped,
            ..PopResult::new(&agent.pop, &agent.agent_id, PopStatus::Done)
        };
        match answer {
            Ok(answer) => {
                pop.matched = answer.matched;
                pop.excluded = answer.excluded;
                pop.kernel_dropped = answer.lookback.kernel_dropped;
                if let Some(clock) = answer.clock {
                    pop.clock_offset_us = Some(clock.offset_ns / 1000);
                    pop.clock_uncertainty_us = Some(clock.uncertainty_ns.div_ceil(1000));
                }
                let mut packets = answer.packets;
                if record.clock_correction
                    && let Some(clock) = answer.clock
                {
                    // Onto the coordinator's clock, as measured (within its uncertainty).
                    for p in &mut packets {
                        p.ts_ns = p.ts_ns.saturating_add_signed(clock.offset_ns);
                    }
                }
                packets.sort_by_key(|p| p.ts_ns); // agents answer in order; be sure
                inputs.push(packets.into_iter().map(|packet| Tagged { source: index, packet }).collect::<Vec<_>>());
            }
            Err(error) => {
                failures.push(format!("PoP {} (agent {}): {error}", agent.pop, agent.agent_id));
                pop.status = PopStatus::Failed;
                pop.error = Some(error);
                inputs.push(Vec::new());
            }
        }
        pops.push(pop);
    }

    let mut merged = merge_sorted(inputs);
    if merged.len() as u64 > limit {
        // Keep the newest `limit`: the window is read backwards from offset_time.
        merged.drain(..merged.len() - limit as usize);
    }
    for t in &merged {
        pops[t.source].packets += 1;
    }
    let failure_text = (!failures.is_empty()).then(|| failures.join("; "));
    if merged.is_empty() {
        return match failure_text {
            Some(f) if failures.len() == agents.len() => failed(format!("every PoP failed: {f}"), pops),
            Some(f) => failed(format!("{NO_PACKETS} Some PoPs failed: {f}"), pops),
            None => failed(NO_PACKETS.into(), pops),
        };
    }
    let mut linktypes: Vec<u32> = merged.iter().map(|t| t.packet.linktype).collect();
    linktypes.sort_unstable();
    linktypes.dedup();
    if linktypes.len() > 1 {
        return failed(
            format!("PoPs captured on different link types {linktypes:?}; one classic PCAP cannot hold them together"),
            pops,
        );
    }
    let linktype = linktypes[0];
    let snaplen = merged.iter().map(|t| t.packet.data.len() as u32).max().unwrap_or(0).max(SAMPLE_SNAPLEN);
    let packets = merged.len() as u64;
    let key = SampleCaptures::file_key(&record.account_id, &record.id);
    match samples.store_pcap(&key, linktype, snaplen, merged).await {
        Ok(()) => Outcome { status: CaptureStatus::Success, packets, pops, error: failure_text, object_key: Some(key) },
        Err(e) => failed(format!("storing the merged PCAP failed: {e}"), pops),
    }
}
