//! Full captures: start them at the agents of a colo, hand out upload grants for their
//! shards, follow every PoP to its end, then merge all shards into one `pcap_<id>.pcap` in
//! the user's bucket.
//!
//! Per PoP: `pending` (start sent) -> `running` -> `uploading` (capture ended, shards still
//! spooled at the agent) -> `done`, or `failed` with a reason. A PoP whose agent disconnects
//! is given [`FullSettings::reconnect_grace`] to come back (an agent that restarts resumes
//! its uploads from its spool); after that it is failed, and the shards it already delivered
//! are still merged. The capture: `pending` -> `running` -> `conversion_pending` ->
//! `conversion_running` -> `success` (a merged file was written; `error_message` names any
//! PoP that failed) or `failed` (nothing could be delivered, with the reasons).
//!
//! Shards live under `edgecap-shards/<capture>/<pop>/<agent>/` next to the merged file and
//! are deleted after a successful merge unless `keep_shards` is set.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, BufWriter};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecap_proto::agent::v1 as pb;
use edgecap_storage::s3::{MULTIPART_THRESHOLD, PART_SIZE, S3Location, S3Store};
use edgecap_storage::{ObjectStore, StorageError};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::AppState;
use crate::destination::DestinationConf;
use crate::model::{CaptureRecord, CaptureStatus, PopResult, ShardRef};

/// Tunables of the full-capture flow.
#[derive(Clone, Debug)]
pub struct FullSettings {
    /// How long a PoP whose agent disconnected may take to come back.
    pub reconnect_grace: Duration,
    /// How long after the time limit PoPs may take to deliver their shards.
    pub upload_grace: Duration,
    /// Validity of presigned upload requests.
    pub presign_expiry: Duration,
    /// How long the merge keeps retrying an unreachable bucket.
    pub merge_retry: Duration,
    /// Keep the shards in the bucket after the merge.
    pub keep_shards: bool,
}

impl Default for FullSettings {
    fn default() -> Self {
        Self {
            reconnect_grace: Duration::from_secs(15),
            upload_grace: Duration::from_secs(600),
            presign_expiry: Duration::from_secs(900),
            merge_retry: Duration::from_secs(600),
            keep_shards: false,
        }
    }
}

enum Event {
    Report(String, pb::CaptureReport),
    Stop,
}

struct Active {
    account: String,
    store: Arc<S3Store>,
    /// agent id -> PoP
    agents: HashMap<String, String>,
    /// Agents whose PoP has reached a final state: their late shards are refused.
    closed: HashSet<String>,
    events: mpsc::UnboundedSender<Event>,
}

/// The full captures this coordinator is running.
#[derive(Default)]
pub struct FullCaptures {
    active: Mutex<HashMap<String, Active>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shard prefix of a capture (relative to the destination prefix).
pub fn shard_prefix(capture_id: &str) -> String {
    format!("edgecap-shards/{capture_id}/")
}

/// The merged file's key (relative to the destination prefix), as Cloudflare names it
/// (`.pcapng` when that format was asked for).
pub fn merged_key(record: &CaptureRecord) -> String {
    let ext = if pcapng(record) { "pcapng" } else { "pcap" };
    format!("pcap_{}.{ext}", record.id)
}

fn pcapng(record: &CaptureRecord) -> bool {
    record.output_format.as_deref() == Some("pcapng")
}

fn valid_shard_name(name: &str) -> bool {
    (1..=80).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Opens the bucket a destination names, with the configured credentials for it.
pub async fn open_destination(state: &AppState, destination: &DestinationConf) -> Result<S3Store, StorageError> {
    let location = S3Location {
        bucket: destination.bucket.clone(),
        prefix: destination.prefix.clone(),
        region: destination.region.clone(),
        endpoint: destination.endpoint.clone(),
    };
    S3Store::connect(location, state.s3_credentials.get(&destination.bucket).cloned()).await
}

/// Reads a per-bucket credentials file (JSON object: bucket -> access key). The file should
/// be readable by the coordinator only; its contents are never logged.
pub fn load_credentials(path: &std::path::Path) -> anyhow::Result<HashMap<String, edgecap_storage::s3::StaticCredentials>> {
    use anyhow::Context as _;
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| anyhow::anyhow!("{}: not a JSON object of bucket -> {{access_key_id, secret_access_key}}: line {} column {}", path.display(), e.line(), e.column()))
}

impl FullCaptures {
    fn send(&self, capture_id: &str, event: Event) {
        if let Some(active) = lock(&self.active).get(capture_id) {
            let _ = active.events.send(event);
        }
    }

    /// A progress report from an agent (ignored unless that agent is part of the capture).
    pub fn report(&self, agent_id: &str, report: pb::CaptureReport) {
        let id = report.capture_id.clone();
        let known = lock(&self.active).get(&id).is_some_and(|a| a.agents.contains_key(agent_id));
        if known {
            self.send(&id, Event::Report(agent_id.to_string(), report));
        }
    }

    pub fn stop(&self, capture_id: &str) {
        self.send(capture_id, Event::Stop);
    }

    pub fn is_active(&self, capture_id: &str) -> bool {
        lock(&self.active).contains_key(capture_id)
    }

    /// Presigned requests for one shard of one agent.
    pub async fn grant(&self, agent_id: &str, pop: &str, request: pb::UploadRequest, expiry: Duration) -> pb::UploadGrant {
        let refuse = |error: String, retryable: bool| pb::UploadGrant {
            request_id: request.request_id.clone(),
            error,
            retryable,
            ..Default::default()
        };
        let store = {
            let active = lock(&self.active);
            match active.get(&request.capture_id) {
                None => return refuse(format!("capture {} is not running on this coordinator", request.capture_id), false),
                Some(a) if a.agents.get(agent_id).map(String::as_str) != Some(pop) => {
                    return refuse(format!("agent {agent_id} is not part of capture {}", request.capture_id), false);
                }
                Some(a) if a.closed.contains(agent_id) => {
                    return refuse("this PoP's part of the capture is already closed".into(), false);
                }
                Some(a) => a.store.clone(),
            }
        };
        if !valid_shard_name(&request.shard) {
            return refuse(format!("shard name {:?} is not acceptable", request.shard), false);
        }
        let key = format!("{}{pop}/{agent_id}/{}", shard_prefix(&request.capture_id), request.shard);
        let to_pb = |p: edgecap_storage::s3::Presigned| pb::PresignedRequest {
            method: p.method,
            url: p.url,
            headers: p.headers.into_iter().map(|(name, value)| pb::HttpHeader { name, value }).collect(),
        };
        let result = async {
            if request.size <= MULTIPART_THRESHOLD {
                let put = store.presign_put(&key, expiry).await?;
                Ok::<_, StorageError>(pb::UploadGrant { put: Some(to_pb(put)), ..Default::default() })
            } else {
                let upload_id = store.create_multipart(&key).await?;
                let count = request.size.div_ceil(PART_SIZE);
                let mut parts = Vec::with_capacity(count as usize);
                for n in 1..=count {
                    parts.push(to_pb(store.presign_part(&key, &upload_id, n as i32, expiry).await?));
                }
                Ok(pb::UploadGrant { upload_id, part_size: PART_SIZE, parts, ..Default::default() })
            }
        }
        .await;
        match result {
            Ok(grant) => pb::UploadGrant { request_id: request.request_id.clone(), key, ..grant },
            Err(e) => refuse(e.to_string(), e.is_retryable()),
        }
    }

    /// Records a delivered shard: completes its multipart upload, checks its size in the
    /// bucket, and adds it to the PoP's shard list (idempotent by key).
    pub async fn commit(&self, repo: &crate::repo::Repo, agent_id: &str, pop: &str, uploaded: pb::ShardUploaded) -> pb::ShardCommitted {
        let answer = |error: String, retryable: bool| pb::ShardCommitted {
            request_id: uploaded.request_id.clone(),
            capture_id: uploaded.capture_id.clone(),
            shard: uploaded.shard.clone(),
            error,
            retryable,
        };
        let (store, account) = {
            let active = lock(&self.active);
            match active.get(&uploaded.capture_id) {
                Some(a) if a.agents.get(agent_id).map(String::as_str) == Some(pop) && !a.closed.contains(agent_id) => {
                    (a.store.clone(), a.account.clone())
                }
                _ => return answer("capture not running here, or not this agent's".into(), false),
            }
        };
        let expected = format!("{}{pop}/{agent_id}/{}", shard_prefix(&uploaded.capture_id), uploaded.shard);
        if uploaded.key != expected {
            return answer(format!("key {:?} was not granted for this shard", uploaded.key), false);
        }
        if !uploaded.upload_id.is_empty() {
            let parts: Vec<(i32, String)> =
                uploaded.part_etags.iter().enumerate().map(|(i, e)| (i as i32 + 1, e.clone())).collect();
            if let Err(e) = store.complete_multipart(&uploaded.key, &uploaded.upload_id, &parts).await {
                // A retried commit finds the upload already completed.
                let done = matches!(store.head(&uploaded.key).await, Ok(Some(m)) if m.size == uploaded.file_bytes);
                if !done {
                    return answer(e.to_string(), e.is_retryable() || matches!(e, StorageError::Rejected(_)));
                }
            }
        }
        match store.head(&uploaded.key).await {
            Ok(Some(meta)) if meta.size == uploaded.file_bytes => {}
            Ok(Some(meta)) => {
                return answer(format!("object has {} bytes, the shard {}", meta.size, uploaded.file_bytes), true);
            }
            Ok(None) => return answer("object not found in the bucket after upload".into(), true),
            Err(e) => return answer(e.to_string(), true),
        }
        let shard = ShardRef {
            key: uploaded.key.clone(),
            packets: uploaded.packets,
            bytes: uploaded.bytes,
            file_bytes: uploaded.file_bytes,
            first_ts_ns: uploaded.first_ts_ns,
            last_ts_ns: uploaded.last_ts_ns,
            sha256: uploaded.sha256.clone(),
            interface: uploaded.interface.clone(),
            filter: uploaded.filter.clone(),
        };
        let result = repo
            .update_capture(&account, &uploaded.capture_id, |r| {
                if let Some(p) = r.pops.iter_mut().find(|p| p.agent_id == agent_id)
                    && !p.shards.iter().any(|s| s.key == shard.key)
                {
                    p.shards.push(shard.clone());
                }
            })
            .await;
        match result {
            Ok(_) => answer(String::new(), false),
            Err(e) => answer(format!("could not record the shard: {e}"), true),
        }
    }

    /// Starts following a capture (at creation, or after a coordinator restart).
    pub fn launch(self: &Arc<Self>, state: Arc<AppState>, record: CaptureRecord, store: S3Store) {
        let (tx, rx) = mpsc::unbounded_channel();
        let agents = record.pops.iter().map(|p| (p.agent_id.clone(), p.pop.clone())).collect();
        let closed = record.pops.iter().filter(|p| p.is_final()).map(|p| p.agent_id.clone()).collect();
        lock(&self.active).insert(
            record.id.clone(),
            Active { account: record.account_id.clone(), store: Arc::new(store), agents, closed, events: tx },
        );
        let this = self.clone();
        tokio::spawn(async move {
            let id = record.id.clone();
            run(&this, state, record, rx).await;
            lock(&this.active).remove(&id);
        });
    }

    fn close_pop(&self, capture_id: &str, agent_id: &str) {
        if let Some(a) = lock(&self.active).get_mut(capture_id) {
            a.closed.insert(agent_id.to_string());
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn start_message(record: &CaptureRecord, not_after_ns: u64) -> pb::CoordinatorMessage {
    let f = &record.filter_v1;
    let filter = pb::FilterV1 {
        source_address: f.source_address.as_ref().map(|a| a.to_string()),
        destination_address: f.destination_address.as_ref().map(|a| a.to_string()),
        source_port: f.source_port.map(u32::from),
        destination_port: f.destination_port.map(u32::from),
        protocol: f.protocol.map(u32::from),
    };
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::StartCapture(pb::StartCapture {
            capture_id: record.id.clone(),
            filter: Some(filter),
            filter_bpf: record.filter_bpf.clone().unwrap_or_default(),
            filter_bpf_hash: record.filter_bpf_hash.clone().unwrap_or_default(),
            time_limit_ms: record.time_limit * 1000,
            packet_limit: record.packet_limit.unwrap_or(0),
            byte_limit: record.byte_limit.unwrap_or(0),
            snaplen: 0,
            rotate_bytes: 0,
            rotate_seconds: 0,
            not_after_ns,
        })),
    }
}

fn stop_message(id: &str) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::StopCapture(pb::StopCapture { capture_id: id.to_string() })),
    }
}

fn apply_report(pop: &mut PopResult, report: &pb::CaptureReport) {
    if pop.is_final() {
        return;
    }
    if let Some(c) = &report.counters {
        pop.packets = c.written;
        pop.matched = c.matched;
        pop.received = c.received;
        pop.kernel_dropped = c.kernel_dropped;
        pop.agent_dropped = c.agent_dropped;
        pop.bytes = c.bytes_written;
    }
    if !report.stop_reason.is_empty() {
        pop.stop_reason = Some(report.stop_reason.clone());
    }
    if !report.error.is_empty() {
        pop.error = Some(report.error.clone());
    }
    pop.status = match report.state.as_str() {
        "running" | "uploading" | "done" | "failed" => report.state.clone(),
        _ => pop.status.clone(),
    };
}

/// "ord01 (agent a1): reason; ord02 (...): reason"
fn failure_summary(pops: &[PopResult]) -> Option<String> {
    let failed: Vec<String> = pops
        .iter()
        .filter(|p| p.status == "failed")
        .map(|p| format!("{} (agent {}): {}", p.pop, p.agent_id, p.error.as_deref().unwrap_or("failed")))
        .collect();
    (!failed.is_empty()).then(|| format!("PoPs failed: {}", failed.join("; ")))
}

/// Writes the runner's view of the PoPs (not their shard lists, which commits own).
async fn persist(state: &AppState, record: &CaptureRecord) -> bool {
    let result = state
        .repo
        .update_capture(&record.account_id, &record.id, |r| {
            r.status = record.status;
            r.error_message = record.error_message.clone();
            r.packets_captured = record.packets_captured;
            for view in &record.pops {
                if let Some(p) = r.pops.iter_mut().find(|p| p.agent_id == view.agent_id) {
                    let shards = std::mem::take(&mut p.shards);
                    *p = PopResult { shards, ..view.clone() };
                }
            }
        })
        .await;
    match result {
        Ok(_) => true,
        Err(error) => {
            // Kept in memory and written at the next tick: results are not lost to an outage.
            tracing::warn!(capture = %record.id, %error, "capture status not written; will retry");
            false
        }
    }
}

async fn run(full: &FullCaptures, state: Arc<AppState>, mut record: CaptureRecord, mut rx: mpsc::UnboundedReceiver<Event>) {
    let settings = state.full_settings.clone();
    let id = record.id.clone();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(record.time_limit) + settings.upload_grace;
    // A start that reaches an agent after this is refused by it (a stale job must not
    // capture traffic nobody asked for any more).
    let not_after_ns = now_ns() + 30_000_000_000;
    let mut start_sent: HashMap<String, Instant> = HashMap::new();
    let mut stop_sent: HashMap<String, Instant> = HashMap::new();
    let mut gone_since: HashMap<String, Instant> = HashMap::new();
    let mut stopping = record.stop_requested.is_some();
    let mut dirty = true;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let start = start_message(&record, not_after_ns);
    tracing::info!(capture = %id, pops = record.pops.len(), "full capture following its PoPs");
    while record.status == CaptureStatus::Pending || record.status == CaptureStatus::Running {
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::Report(agent_id, report)) => {
                    if let Some(pop) = record.pops.iter_mut().find(|p| p.agent_id == agent_id) {
                        let before = pop.clone();
                        apply_report(pop, &report);
                        if pop.is_final() {
                            full.close_pop(&id, &agent_id);
                        }
                        dirty |= *pop != before;
                    }
                }
                Some(Event::Stop) => {
                    stopping = true;
                    stop_sent.clear();
                }
                None => return,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let connected: HashSet<String> = state.registry.agents().into_iter().map(|a| a.agent_id).collect();
                for pop in record.pops.iter_mut().filter(|p| !p.is_final()) {
                    if !connected.contains(&pop.agent_id) {
                        let since = *gone_since.entry(pop.agent_id.clone()).or_insert(now);
                        if now - since > settings.reconnect_grace {
                            pop.status = "failed".into();
                            pop.error = Some(format!(
                                "agent disconnected during the capture and did not come back within {} s; the {} shards it delivered before are kept",
                                settings.reconnect_grace.as_secs(),
                                pop.shards.len(),
                            ));
                            full.close_pop(&id, &pop.agent_id);
                            dirty = true;
                        }
                        continue;
                    }
                    gone_since.remove(&pop.agent_id);
                    if pop.status == "pending" && start_sent.get(&pop.agent_id).is_none_or(|t| now - *t > Duration::from_secs(3)) {
                        if now_ns() > not_after_ns {
                            pop.status = "failed".into();
                            pop.error = Some("the agent did not start the capture in time".into());
                            full.close_pop(&id, &pop.agent_id);
                            dirty = true;
                            continue;
                        }
                        state.registry.send(&pop.agent_id, start.clone()).await;
                        start_sent.insert(pop.agent_id.clone(), now);
                    }
                    if stopping && matches!(pop.status.as_str(), "pending" | "running")
                        && stop_sent.get(&pop.agent_id).is_none_or(|t| now - *t > Duration::from_secs(2))
                    {
                        state.registry.send(&pop.agent_id, stop_message(&id)).await;
                        stop_sent.insert(pop.agent_id.clone(), now);
                    }
                }
                if now > deadline {
                    for pop in record.pops.iter_mut().filter(|p| !p.is_final()) {
                        pop.status = "failed".into();
                        pop.error = Some(format!("did not finish within time_limit + {} s", settings.upload_grace.as_secs()));
                        full.close_pop(&id, &pop.agent_id);
                        dirty = true;
                    }
                }
                if record.status == CaptureStatus::Pending && record.pops.iter().any(|p| p.status != "pending") {
                    record.status = CaptureStatus::Running;
                    dirty = true;
                }
                if record.pops.iter().all(PopResult::is_final) {
                    record.status = CaptureStatus::ConversionPending;
                    dirty = true;
                }
                if dirty && persist(&state, &record).await {
                    dirty = false;
                }
            }
        }
    }
    // Every PoP is final. Take the shard lists as committed.
    loop {
        if persist(&state, &record).await {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    convert(full, &state, record).await;
}

async fn with_retry<T, F, Fut>(what: &str, patience: Duration, mut op: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let start = Instant::now();
    let mut wait = Duration::from_millis(500);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && start.elapsed() < patience => {
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn convert(full: &FullCaptures, state: &Arc<AppState>, mut record: CaptureRecord) {
    let id = record.id.clone();
    let Some(store) = lock(&full.active).get(&id).map(|a| a.store.clone()) else { return };
    // Shard lists as committed (commits write them directly).
    let committed = match state.repo.get_capture(&record.account_id, &id).await {
        Ok(Some(r)) => r,
        _ => record.clone(),
    };
    for pop in &mut record.pops {
        if let Some(c) = committed.pops.iter().find(|c| c.agent_id == pop.agent_id) {
            pop.shards = c.shards.clone();
        }
    }
    record.status = CaptureStatus::ConversionRunning;
    persist(state, &record).await;
    let settings = state.full_settings.clone();
    let outcome = merge_into_bucket(state, &store, &record, &settings).await;
    let failures = failure_summary(&record.pops);
    match outcome {
        Ok(Some(packets)) => {
            record.status = CaptureStatus::Success;
            record.packets_captured = Some(packets);
            record.error_message = failures;
            if !settings.keep_shards {
                for shard in record.pops.iter().flat_map(|p| &p.shards) {
                    if let Err(e) = store.delete(&shard.key).await {
                        tracing::warn!(capture = %id, key = %shard.key, error = %e, "shard not deleted after the merge");
                    }
                }
            }
            tracing::info!(capture = %id, packets, "full capture merged into the bucket");
        }
        Ok(None) => {
            record.status = CaptureStatus::Failed;
            record.packets_captured = Some(0);
            record.error_message = Some(failures.unwrap_or_else(|| "no PoP delivered any packet".into()));
        }
        Err(e) => {
            record.status = CaptureStatus::Failed;
            let mut message = format!("merge into the bucket failed: {e}; the shards are kept under {}", shard_prefix(&id));
            if let Some(f) = failures {
                message.push_str("; ");
                message.push_str(&f);
            }
            record.error_message = Some(message);
            tracing::error!(capture = %id, error = %e, "full capture merge failed");
        }
    }
    loop {
        if persist(state, &record).await {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Downloads the shards, merges them in time order with per-PoP provenance, writes
/// `pcap_<id>.pcap`. `Ok(None)` when there is nothing to merge.
async fn merge_into_bucket(
    state: &AppState,
    store: &Arc<S3Store>,
    record: &CaptureRecord,
    settings: &FullSettings,
) -> anyhow::Result<Option<u64>> {
    let shards: Vec<(&PopResult, &ShardRef)> =
        record.pops.iter().flat_map(|p| p.shards.iter().map(move |s| (p, s))).collect();
    if shards.is_empty() {
        return Ok(None);
    }
    let dir = state.tmp_dir.join(format!("full-{}", record.id));
    tokio::fs::create_dir_all(&dir).await?;
    let result = async {
        let mut inputs = Vec::new();
        for (i, (pop, shard)) in shards.iter().enumerate() {
            let path = dir.join(format!("{i:05}.pcap"));
            with_retry("download a shard", settings.merge_retry, || async {
                let (_, mut reader) = store.get(&shard.key).await?;
                let mut file = tokio::fs::File::create(&path).await?;
                tokio::io::copy(&mut reader, &mut file).await.map_err(|e| StorageError::Unavailable(format!("download {}: {e}", shard.key)))?;
                file.flush().await?;
                Ok(())
            })
            .await?;
            inputs.push((path, pop.pop.clone(), pop.agent_id.clone(), (*shard).clone()));
        }
        let out_path = dir.join("merged.pcap");
        let comment = format!("edgecap full capture {}", record.id);
        let merged = out_path.clone();
        let format = if pcapng(record) { edgecap_merge::OutputFormat::PcapNg } else { edgecap_merge::OutputFormat::Pcap };
        // Per-PoP counters for the pcapng interface statistics.
        let counters: HashMap<String, (u64, u64)> = record
            .pops
            .iter()
            .map(|p| (p.agent_id.clone(), (p.received, p.kernel_dropped + p.agent_dropped)))
            .collect();
        let report = tokio::task::spawn_blocking(move || -> anyhow::Result<edgecap_merge::MergeReport> {
            let mut readers = Vec::new();
            for (path, pop, agent, shard) in inputs {
                let (received, dropped) = counters.get(&agent).copied().unwrap_or_default();
                readers.push(edgecap_merge::MergeInput {
                    name: shard.key,
                    reader: BufReader::with_capacity(32 << 10, std::fs::File::open(&path)?),
                    provenance: Some(edgecap_merge::Provenance {
                        pop,
                        agent,
                        iface: (!shard.interface.is_empty()).then_some(shard.interface),
                        filter: (!shard.filter.is_empty()).then_some(shard.filter),
                        received: Some(received),
                        dropped: Some(dropped),
                    }),
                });
            }
            let out = BufWriter::with_capacity(64 << 10, std::fs::File::create(&merged)?);
            let options = edgecap_merge::MergeOptions {
                format: Some(format),
                salvage: false,
                comment: Some(comment),
            };
            let (out, report) = edgecap_merge::merge(readers, out, &options)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(report)
        })
        .await??;
        let key = merged_key(record);
        with_retry("write the merged file", settings.merge_retry, || store.put_file(&key, &out_path)).await?;
        Ok(Some(report.packets))
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}
