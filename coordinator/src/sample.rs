//! Sample captures: ask every connected agent's lookback for the window
//! `[offset_time - time_limit, offset_time]`, merge the answers by timestamp, keep the newest
//! `packet_limit` packets, and store one classic PCAP for `/download`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgecap_merge::{Timestamped, merge_sorted, write_classic_pcap};
use edgecap_proto::agent::v1 as pb;
use futures::future::join_all;

use crate::AppState;
use crate::model::{CaptureRecord, CaptureStatus, PopResult};

/// Cloudflare's wording when nothing matched.
pub const NO_PACKETS: &str =
    "No packets matched the filter in the time limit given. Please modify the filter or try again.";
/// Snap length of sample files (the lookback's default truncation).
pub const SAMPLE_SNAPLEN: u32 = 160;

struct Tagged {
    source: usize,
    packet: pb::Packet,
}

impl Timestamped for Tagged {
    fn ts_ns(&self) -> u64 {
        self.packet.ts_ns
    }
}

/// The outcome to record.
struct Outcome {
    status: CaptureStatus,
    packets: u64,
    pops: Vec<PopResult>,
    error: Option<String>,
    object_key: Option<String>,
}

fn window(record: &CaptureRecord) -> Result<(u64, u64), String> {
    let offset = record.offset_time.as_deref().ok_or("offset_time missing")?;
    let end = time::OffsetDateTime::parse(offset, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("offset_time: {e}"))?;
    let end_ns = u64::try_from(end.unix_timestamp_nanos()).map_err(|_| "offset_time before 1970".to_string())?;
    Ok((end_ns.saturating_sub(record.time_limit * 1_000_000_000), end_ns))
}

fn filter_to_pb(f: &edgecap_capture::FilterV1) -> pb::FilterV1 {
    pb::FilterV1 {
        source_address: f.source_address.map(|p| p.to_string()),
        destination_address: f.destination_address.map(|p| p.to_string()),
        source_port: f.source_port.map(u32::from),
        destination_port: f.destination_port.map(u32::from),
        protocol: f.protocol.map(u32::from),
    }
}

/// An agent a sample capture asks: connected here, or (relayed through the state store) to
/// another replica.
struct Target {
    agent_id: String,
    pop: String,
    sample_rate: u32,
    kernel_dropped: u64,
    local: bool,
}

/// Every present agent: those connected here from the registry, the others from the shared
/// presence keys. With the state store unreachable, the local ones only.
async fn targets(state: &AppState) -> Vec<Target> {
    let mut out: Vec<Target> = state
        .registry
        .agents()
        .into_iter()
        .map(|a| Target {
            agent_id: a.agent_id,
            pop: a.pop,
            sample_rate: a.sample_rate,
            kernel_dropped: a.lookback.kernel_dropped,
            local: true,
        })
        .collect();
    if let Ok(present) = state.repo.list_agents().await {
        for p in present {
            if out.iter().all(|t| t.agent_id != p.agent_id) {
                out.push(Target {
                    agent_id: p.agent_id,
                    pop: p.pop,
                    sample_rate: p.sample_rate,
                    kernel_dropped: 0,
                    local: false,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
    out
}

/// Runs one sample capture to its final status. Never panics; every failure is recorded on
/// the capture with a reason.
#[tracing::instrument(name = "sample_capture", skip(state), fields(capture = %id))]
pub async fn run(state: Arc<AppState>, account: String, id: String) {
    let mut wait = Duration::from_millis(500);
    let started = tokio::time::Instant::now();
    let record = loop {
        match state.repo.get_capture(&account, &id).await {
            Ok(Some(record)) => break record,
            Ok(None) => return,
            Err(crate::repo::RepoError::State(error))
                if error.is_retryable() && started.elapsed() < RESULT_PATIENCE =>
            {
                tracing::warn!(%error, capture = %id, "sample capture not readable yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                tracing::error!(%error, capture = %id, "sample capture could not be read");
                return;
            }
        }
    };
    let outcome = execute(&state, &record).await;
    // The result is kept in memory and written when the state store is back (an outage of
    // up to RESULT_PATIENCE); the file is already stored.
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(500);
    loop {
        let result = state
            .repo
            .update_capture(&account, &id, |r| {
                r.status = outcome.status;
                r.packets_captured = Some(outcome.packets);
                r.pops = outcome.pops.clone();
                r.error_message = outcome.error.clone();
                r.object_key = outcome.object_key.clone();
            })
            .await;
        match result {
            Ok(r) => {
                tracing::info!(capture = %id, status = ?r.status, packets = outcome.packets, "sample capture finished");
                return;
            }
            Err(crate::repo::RepoError::State(error))
                if error.is_retryable() && started.elapsed() < RESULT_PATIENCE =>
            {
                tracing::warn!(%error, capture = %id, retry_in_ms = wait.as_millis() as u64, "sample capture result not written yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                tracing::error!(%error, capture = %id, "sample capture result could not be recorded");
                return;
            }
        }
    }
}

/// How long a finished sample capture keeps trying to write its result.
const RESULT_PATIENCE: Duration = Duration::from_secs(600);

fn failed(error: String, pops: Vec<PopResult>) -> Outcome {
    Outcome { status: CaptureStatus::Failed, packets: 0, pops, error: Some(error), object_key: None }
}

async fn execute(state: &AppState, record: &CaptureRecord) -> Outcome {
    let (from_ns, to_ns) = match window(record) {
        Ok(w) => w,
        Err(e) => return failed(e, vec![]),
    };
    let limit = record.packet_limit.unwrap_or(state.limits.packet_limit_max);
    // Just after a restart agents may still be reconnecting.
    let mut agents = targets(state).await;
    let wait_until = tokio::time::Instant::now() + state.agent_wait;
    while agents.is_empty() && tokio::time::Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        agents = targets(state).await;
    }
    if agents.is_empty() {
        return failed("no agent is connected: sample captures read the lookback of connected agents".into(), vec![]);
    }
    let query = pb::SampleQuery {
        request_id: String::new(),
        from_ns,
        to_ns,
        filter: Some(filter_to_pb(&record.filter_v1)),
        packet_limit: limit as u32,
        filter_bpf: record.filter_bpf.clone().unwrap_or_default(),
        filter_bpf_hash: record.filter_bpf_hash.clone().unwrap_or_default(),
    };
    let answers = join_all(agents.iter().map(|a| {
        let query = query.clone();
        async move {
            if a.local {
                state.registry.sample(&a.agent_id, query, state.sample_timeout).await
            } else {
                crate::relay::remote_sample(&state.repo, &a.agent_id, query, state.sample_timeout).await
            }
        }
    }))
    .await;

    let mut pops = Vec::new();
    let mut inputs = Vec::new();
    let mut failures = Vec::new();
    for (index, (agent, answer)) in agents.iter().zip(answers).enumerate() {
        let mut pop = PopResult {
            pop: agent.pop.clone(),
            agent_id: agent.agent_id.clone(),
            status: "done".into(),
            packets: 0,
            matched: 0,
            sample_rate: agent.sample_rate,
            kernel_dropped: agent.kernel_dropped,
            error: None,
            ..PopResult::default()
        };
        match answer {
            Ok(answer) => {
                pop.matched = answer.matched;
                pop.kernel_dropped = answer.lookback.kernel_dropped;
                let mut packets = answer.packets;
                packets.sort_by_key(|p| p.ts_ns); // agents answer in order; be sure
                inputs.push(packets.into_iter().map(|packet| Tagged { source: index, packet }).collect::<Vec<_>>());
            }
            Err(error) => {
                failures.push(format!("PoP {} (agent {}): {error}", agent.pop, agent.agent_id));
                pop.status = "failed".into();
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
    let key = format!("accounts/{}/pcaps/{}.pcap", record.account_id, record.id);
    match store_pcap(state, &key, linktype, snaplen, merged).await {
        Ok(()) => Outcome { status: CaptureStatus::Success, packets, pops, error: failure_text, object_key: Some(key) },
        Err(e) => failed(format!("storing the merged PCAP failed: {e}"), pops),
    }
}

async fn store_pcap(
    state: &AppState,
    key: &str,
    linktype: u32,
    snaplen: u32,
    merged: Vec<Tagged>,
) -> Result<(), String> {
    let tmp: PathBuf = state.tmp_dir.join(format!("{}.pcap.tmp", crate::model::new_id()));
    let path = tmp.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = std::io::BufWriter::new(file);
        let (out, _) = write_classic_pcap(
            out,
            linktype,
            snaplen,
            merged.iter().map(|t| (t.packet.ts_ns, t.packet.orig_len, &t.packet.data[..])),
        )
        .map_err(|e| e.to_string())?;
        let file = out.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let result = match written {
        Ok(()) => state.store.put_file(key, &tmp).await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&tmp).await;
    result
}
