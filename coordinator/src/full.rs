//! Full captures: start them at the agents of a colo, hand out upload grants for their
//! shards, follow every PoP to its end, then merge all shards into one `pcap_<id>.pcap` in
//! the user's bucket. Works with any number of coordinator replicas sharing the state store:
//!
//! * the replica that accepts a capture writes the capture record and one **job** per agent
//!   (`jobs/{agent}/{capture}`);
//! * every replica **watches** the jobs and forwards them (start, and stop when the job says
//!   so) to the agents connected to it, and again when an agent (re)connects;
//! * the replica an agent is connected to writes that PoP's progress (`pops/{capture}/{agent}`,
//!   compare-and-swap, never over a final state), grants its uploads and records its shards
//!   (`shards/{capture}/{agent}/{shard}`);
//! * one elected **leader** (a leased `leader` key) follows every unfinished capture: it fails
//!   PoPs whose agent is gone longer than the reconnect grace or that miss their deadline,
//!   rolls the PoPs up into the capture's status, merges the shards and writes the result.
//!   When the leader dies, the next one takes over within the lease time and resumes: a merge
//!   that was running is done again (it overwrites the same object), shards are deleted only
//!   after the final status is written.
//!
//! Per PoP: `pending` (job written) -> `running` -> `uploading` (capture ended, shards still
//! spooled at the agent) -> `done`, or `failed` with a reason. The capture: `pending` ->
//! `running` -> `conversion_pending` -> `conversion_running` -> `success` (a merged file was
//! written; `error_message` names any PoP that failed) or `failed`.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecap_proto::agent::v1 as pb;
use edgecap_storage::s3::{MULTIPART_THRESHOLD, PART_SIZE, S3Location, S3Store, StaticCredentials};
use edgecap_storage::{ObjectStore, StorageError};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::control::Registry;
use crate::destination::DestinationConf;
use crate::model::{CaptureRecord, CaptureStatus, CaptureType, JobRecord, PopResult, ShardRef};
use crate::repo::{JOBS_PREFIX, LEADER_KEY, Repo};

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
    /// Lease of the leader key: a dead leader is replaced within about this long.
    pub leader_ttl: Duration,
}

impl Default for FullSettings {
    fn default() -> Self {
        Self {
            reconnect_grace: Duration::from_secs(15),
            upload_grace: Duration::from_secs(600),
            presign_expiry: Duration::from_secs(900),
            merge_retry: Duration::from_secs(600),
            keep_shards: false,
            leader_ttl: Duration::from_secs(5),
        }
    }
}

/// A start that has not reached its agent after this long is refused by the agent.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The full-capture machinery of one coordinator replica.
pub struct FullCaptures {
    repo: Repo,
    registry: Arc<Registry>,
    settings: FullSettings,
    credentials: HashMap<String, StaticCredentials>,
    tmp_dir: PathBuf,
    name: String,
    stores: Mutex<HashMap<String, Arc<S3Store>>>,
    leader: watch::Sender<bool>,
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

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Reads a per-bucket credentials file (JSON object: bucket -> access key). The file should
/// be readable by the coordinator only; its contents are never logged.
pub fn load_credentials(path: &std::path::Path) -> anyhow::Result<HashMap<String, StaticCredentials>> {
    use anyhow::Context as _;
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a JSON object of bucket -> {{access_key_id, secret_access_key}}: line {} column {}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

fn start_message(job: &JobRecord) -> pb::CoordinatorMessage {
    let f = &job.filter_v1;
    let filter = pb::FilterV1 {
        source_address: f.source_address.as_ref().map(|a| a.to_string()),
        destination_address: f.destination_address.as_ref().map(|a| a.to_string()),
        source_port: f.source_port.map(u32::from),
        destination_port: f.destination_port.map(u32::from),
        protocol: f.protocol.map(u32::from),
    };
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::StartCapture(pb::StartCapture {
            capture_id: job.capture_id.clone(),
            filter: Some(filter),
            filter_bpf: job.filter_bpf.clone().unwrap_or_default(),
            filter_bpf_hash: job.filter_bpf_hash.clone().unwrap_or_default(),
            time_limit_ms: job.time_limit * 1000,
            packet_limit: job.packet_limit.unwrap_or(0),
            byte_limit: job.byte_limit.unwrap_or(0),
            snaplen: 0,
            rotate_bytes: 0,
            rotate_seconds: 0,
            not_after_ns: job.not_after_ns,
        })),
    }
}

fn stop_message(id: &str) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::StopCapture(pb::StopCapture { capture_id: id.to_string() })),
    }
}

/// Folds an agent's report into its PoP's state (never out of a final state).
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
    if matches!(report.state.as_str(), "running" | "uploading" | "done" | "failed") {
        pop.status = report.state.clone();
    }
}

/// "PoPs failed: ord01 (agent a1): reason; ... PoPs skipped (offline): ord04 (agent a4)"
fn failure_summary(pops: &[PopResult]) -> Option<String> {
    let failed: Vec<String> = pops
        .iter()
        .filter(|p| p.status == "failed")
        .map(|p| format!("{} (agent {}): {}", p.pop, p.agent_id, p.error.as_deref().unwrap_or("failed")))
        .collect();
    let skipped: Vec<String> =
        pops.iter().filter(|p| p.status == "skipped").map(|p| format!("{} (agent {})", p.pop, p.agent_id)).collect();
    let mut parts = Vec::new();
    if !failed.is_empty() {
        parts.push(format!("PoPs failed: {}", failed.join("; ")));
    }
    if !skipped.is_empty() {
        parts.push(format!("PoPs skipped (offline): {}", skipped.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join(". "))
}

impl FullCaptures {
    pub fn new(
        repo: Repo,
        registry: Arc<Registry>,
        name: String,
        settings: FullSettings,
        credentials: HashMap<String, StaticCredentials>,
        tmp_dir: PathBuf,
    ) -> Self {
        Self {
            repo,
            registry,
            settings,
            credentials,
            tmp_dir,
            name,
            stores: Mutex::new(HashMap::new()),
            leader: watch::channel(false).0,
        }
    }

    pub fn settings(&self) -> &FullSettings {
        &self.settings
    }

    /// Whether this replica is the leader now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// The bucket a destination names, with the configured credentials for it (cached).
    pub async fn store_for(&self, destination: &DestinationConf) -> Result<Arc<S3Store>, StorageError> {
        if let Some(store) = lock(&self.stores).get(&destination.uri) {
            return Ok(store.clone());
        }
        let location = S3Location {
            bucket: destination.bucket.clone(),
            prefix: destination.prefix.clone(),
            region: destination.region.clone(),
            endpoint: destination.endpoint.clone(),
        };
        let store = Arc::new(S3Store::connect(location, self.credentials.get(&destination.bucket).cloned()).await?);
        lock(&self.stores).insert(destination.uri.clone(), store.clone());
        Ok(store)
    }

    async fn store_for_uri(&self, uri: &str) -> Result<Arc<S3Store>, StorageError> {
        let destination = DestinationConf::parse(uri)
            .map_err(|e| StorageError::Rejected(format!("stored destination_conf does not parse: {}", e.message)))?;
        self.store_for(&destination).await
    }

    /// Writes the jobs and initial PoP states of a capture just created (its record exists).
    pub async fn submit(&self, record: &CaptureRecord) -> crate::repo::Result<()> {
        let not_after_ns = now_ns() + START_DEADLINE.as_nanos() as u64;
        for pop in &record.pops {
            self.repo.cas_pop(&record.id, &pop.agent_id, None, pop).await?;
            if pop.is_final() {
                continue; // skipped: offline
            }
            let job = JobRecord {
                capture_id: record.id.clone(),
                account_id: record.account_id.clone(),
                agent_id: pop.agent_id.clone(),
                pop: pop.pop.clone(),
                destination_conf: record.destination_conf.clone().unwrap_or_default(),
                filter_v1: record.filter_v1.clone(),
                filter_bpf: record.filter_bpf.clone(),
                filter_bpf_hash: record.filter_bpf_hash.clone(),
                time_limit: record.time_limit,
                packet_limit: record.packet_limit,
                byte_limit: record.byte_limit,
                not_after_ns,
                stop: false,
            };
            self.repo.put_job(&job).await?;
        }
        Ok(())
    }

    /// Marks every job of a capture stopped; the replicas forward the stop to their agents.
    pub async fn request_stop(&self, record: &CaptureRecord) -> crate::repo::Result<()> {
        for pop in &record.pops {
            if let Some(mut job) = self.repo.get_job(&pop.agent_id, &record.id).await?
                && !job.stop
            {
                job.stop = true;
                self.repo.put_job(&job).await?;
            }
        }
        Ok(())
    }

    async fn forward(&self, job: &JobRecord) {
        if !self.registry.is_connected(&job.agent_id) {
            return;
        }
        // Only jobs whose PoP is still open are sent (a finished PoP is never restarted).
        match self.repo.get_pop(&job.capture_id, &job.agent_id).await {
            Ok(Some((pop, _))) if !pop.is_final() => {}
            _ => return,
        }
        self.registry.send(&job.agent_id, start_message(job)).await;
        if job.stop {
            self.registry.send(&job.agent_id, stop_message(&job.capture_id)).await;
        }
    }

    /// Sends an agent that just connected the jobs it must run (idempotent at the agent).
    pub async fn on_agent_connected(&self, agent_id: &str) {
        match self.repo.jobs_for_agent(agent_id).await {
            Ok(jobs) => {
                for job in jobs {
                    self.forward(&job).await;
                }
            }
            Err(error) => tracing::warn!(%agent_id, %error, "could not read the agent's jobs"),
        }
    }

    /// Forwards job changes to the agents connected here, driven by a watch on the jobs.
    pub async fn forward_jobs(self: Arc<Self>, cancel: CancellationToken) {
        // Jobs written before the watch (re)starts are covered by sending every connected
        // agent its jobs.
        let this: &Self = &self;
        let catch_up = move || async move {
            for agent in this.registry.agents() {
                this.on_agent_connected(&agent.agent_id).await;
            }
        };
        let on_put = move |kv: edgecap_state::KeyValue| async move {
            match crate::repo::decode::<JobRecord>(&kv.key, &kv.value) {
                Ok(job) => this.forward(&job).await,
                Err(error) => tracing::warn!(%error, "undecodable job skipped"),
            }
        };
        self.repo.follow_puts(JOBS_PREFIX, "job", &cancel, catch_up, on_put).await;
    }

    /// A progress report from an agent: folded into its PoP's state (ignored unless the agent
    /// is part of the capture).
    pub async fn report(&self, agent_id: &str, report: pb::CaptureReport) {
        if let Err(error) = self.repo.update_pop(&report.capture_id, agent_id, |pop| apply_report(pop, &report)).await {
            tracing::warn!(capture = %report.capture_id, %agent_id, %error, "PoP progress not written");
        }
    }

    /// The job of `agent_id` for a capture, if its PoP is still open.
    async fn open_job(&self, agent_id: &str, pop: &str, capture_id: &str) -> Result<JobRecord, (String, bool)> {
        let job = match self.repo.get_job(agent_id, capture_id).await {
            Ok(Some(job)) if job.pop == pop => job,
            Ok(_) => return Err((format!("capture {capture_id} has no job for agent {agent_id}"), false)),
            Err(e) => return Err((e.to_string(), true)),
        };
        match self.repo.get_pop(capture_id, agent_id).await {
            Ok(Some((p, _))) if !p.is_final() => Ok(job),
            Ok(_) => Err(("this PoP's part of the capture is already closed".into(), false)),
            Err(e) => Err((e.to_string(), true)),
        }
    }

    /// Presigned requests for one shard of one agent.
    #[tracing::instrument(name = "upload_grant", skip_all, fields(capture = %request.capture_id, agent = %agent_id))]
    pub async fn grant(&self, agent_id: &str, pop: &str, request: pb::UploadRequest) -> pb::UploadGrant {
        let refuse = |error: String, retryable: bool| pb::UploadGrant {
            request_id: request.request_id.clone(),
            error,
            retryable,
            ..Default::default()
        };
        let job = match self.open_job(agent_id, pop, &request.capture_id).await {
            Ok(job) => job,
            Err((error, retryable)) => return refuse(error, retryable),
        };
        if !valid_shard_name(&request.shard) {
            return refuse(format!("shard name {:?} is not acceptable", request.shard), false);
        }
        let store = match self.store_for_uri(&job.destination_conf).await {
            Ok(s) => s,
            Err(e) => return refuse(e.to_string(), true),
        };
        let key = format!("{}{pop}/{agent_id}/{}", shard_prefix(&request.capture_id), request.shard);
        let to_pb = |p: edgecap_storage::s3::Presigned| pb::PresignedRequest {
            method: p.method,
            url: p.url,
            headers: p.headers.into_iter().map(|(name, value)| pb::HttpHeader { name, value }).collect(),
        };
        let expiry = self.settings.presign_expiry;
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
    /// bucket, and records it (idempotent by key).
    #[tracing::instrument(name = "shard_commit", skip_all, fields(capture = %uploaded.capture_id, agent = %agent_id))]
    pub async fn commit(&self, agent_id: &str, pop: &str, uploaded: pb::ShardUploaded) -> pb::ShardCommitted {
        let answer = |error: String, retryable: bool| pb::ShardCommitted {
            request_id: uploaded.request_id.clone(),
            capture_id: uploaded.capture_id.clone(),
            shard: uploaded.shard.clone(),
            error,
            retryable,
        };
        let job = match self.open_job(agent_id, pop, &uploaded.capture_id).await {
            Ok(job) => job,
            Err((error, retryable)) => return answer(error, retryable),
        };
        let expected = format!("{}{pop}/{agent_id}/{}", shard_prefix(&uploaded.capture_id), uploaded.shard);
        if uploaded.key != expected || !valid_shard_name(&uploaded.shard) {
            return answer(format!("key {:?} was not granted for this shard", uploaded.key), false);
        }
        let store = match self.store_for_uri(&job.destination_conf).await {
            Ok(s) => s,
            Err(e) => return answer(e.to_string(), true),
        };
        if !uploaded.upload_id.is_empty() {
            let parts: Vec<(i32, String)> =
                uploaded.part_etags.iter().enumerate().map(|(i, e)| (i as i32 + 1, e.clone())).collect();
            if let Err(e) = store.complete_multipart(&uploaded.key, &uploaded.upload_id, &parts).await {
                // A retried commit finds the upload already completed.
                let done = matches!(store.head(&uploaded.key).await, Ok(Some(m)) if m.size == uploaded.file_bytes);
                if !done {
                    return answer(e.to_string(), true);
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
        match self.repo.put_shard(&uploaded.capture_id, agent_id, &uploaded.shard, &shard).await {
            Ok(()) => answer(String::new(), false),
            Err(e) => answer(format!("could not record the shard: {e}"), true),
        }
    }

    /// Campaigns for leadership for as long as the coordinator runs; while leader, follows
    /// every unfinished full capture to its end.
    pub async fn lead(self: Arc<Self>, cancel: CancellationToken) {
        let store = self.repo.store().clone();
        let ttl = self.settings.leader_ttl;
        while !cancel.is_cancelled() {
            let attempt = async {
                let lease = store.grant_lease(ttl).await?;
                let value = serde_json::to_vec(&serde_json::json!({
                    "name": self.name, "since": crate::model::rfc3339(time::OffsetDateTime::now_utc()),
                }))
                .unwrap_or_default();
                if store.compare_and_put(LEADER_KEY, None, value, Some(lease)).await?.is_none() {
                    let _ = store.revoke_lease(lease).await;
                    return Ok::<_, edgecap_state::StateError>(None);
                }
                Ok(Some(lease))
            }
            .await;
            let lease = match attempt {
                Ok(Some(lease)) => lease,
                Ok(None) | Err(_) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            };
            tracing::info!(name = %self.name, "elected leader");
            self.leader.send_replace(true);
            let work = CancellationToken::new();
            let follower = tokio::spawn(self.clone().follow_captures(work.clone()));
            // Keep the lease; step down as soon as it cannot be renewed (another replica may
            // take over after the TTL, so this one must stop acting first).
            let mut last_renewal = Instant::now();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
                match tokio::time::timeout(ttl / 3, store.keep_alive(lease)).await {
                    Ok(Ok(())) => last_renewal = Instant::now(),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "leader lease not renewed");
                        if !error.is_retryable() || last_renewal.elapsed() > ttl / 2 {
                            break;
                        }
                    }
                    Err(_) => {
                        if last_renewal.elapsed() > ttl / 2 {
                            break;
                        }
                    }
                }
            }
            work.cancel();
            let _ = follower.await;
            self.leader.send_replace(false);
            let _ = store.revoke_lease(lease).await;
            tracing::info!(name = %self.name, "no longer leader");
        }
    }

    /// The leader's loop: a runner per unfinished full capture.
    async fn follow_captures(self: Arc<Self>, cancel: CancellationToken) {
        let mut runners: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        while !cancel.is_cancelled() {
            match self.repo.list_all_captures().await {
                Ok(records) => {
                    runners.retain(|_, h| !h.is_finished());
                    for record in records {
                        if record.capture_type != CaptureType::Full
                            || record.status.is_final()
                            || runners.contains_key(&record.id)
                        {
                            continue;
                        }
                        let id = record.id.clone();
                        runners.insert(id, tokio::spawn(self.clone().run(record, cancel.clone())));
                    }
                }
                Err(error) => tracing::warn!(%error, "could not list captures"),
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        for (_, handle) in runners {
            handle.abort();
        }
    }

    /// Writes the capture's status fields (not the parts the API owns, like stop_requested).
    async fn persist(&self, record: &CaptureRecord) -> bool {
        let result = self
            .repo
            .update_capture(&record.account_id, &record.id, |r| {
                r.status = record.status;
                r.error_message = record.error_message.clone();
                r.packets_captured = record.packets_captured;
                r.pops = record.pops.clone();
            })
            .await;
        match result {
            Ok(_) => true,
            Err(error) => {
                // Kept in memory and written at the next attempt: results are not lost to an outage.
                tracing::warn!(capture = %record.id, %error, "capture status not written; will retry");
                false
            }
        }
    }

    /// Follows one capture to its end (leader only; cancelled when leadership is lost).
    #[tracing::instrument(name = "full_capture", skip_all, fields(capture = %record.id, leader = %self.name))]
    async fn run(self: Arc<Self>, mut record: CaptureRecord, cancel: CancellationToken) {
        let id = record.id.clone();
        let started = Instant::now();
        // Deadlines count from when this leader took the capture over: a new leader gives
        // PoPs the full allowance again rather than failing them for its predecessor's time.
        let deadline = started + Duration::from_secs(record.time_limit) + START_DEADLINE + self.settings.upload_grace;
        let mut gone_since: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tracing::info!(capture = %id, pops = record.pops.len(), "following full capture");
        while matches!(record.status, CaptureStatus::Pending | CaptureStatus::Running) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (pops, present) = match (self.repo.list_pops(&id).await, self.repo.list_agents().await) {
                (Ok(p), Ok(a)) => (p, a.into_iter().map(|a| a.agent_id).collect::<HashSet<_>>()),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(capture = %id, error = %e, "state unreadable; capture goes on");
                    continue;
                }
            };
            let now = Instant::now();
            for pop in pops.iter().filter(|p| !p.is_final()) {
                let reason = if !present.contains(&pop.agent_id) {
                    let since = *gone_since.entry(pop.agent_id.clone()).or_insert(now);
                    (now - since > self.settings.reconnect_grace).then(|| {
                        format!(
                            "agent disconnected during the capture and did not come back within {} s; the shards it delivered before are kept",
                            self.settings.reconnect_grace.as_secs()
                        )
                    })
                } else {
                    gone_since.remove(&pop.agent_id);
                    (now > deadline).then(|| {
                        format!(
                            "did not finish within time_limit + {} s",
                            (START_DEADLINE + self.settings.upload_grace).as_secs()
                        )
                    })
                };
                if let Some(reason) = reason {
                    self.fail_pop(&id, &pop.agent_id, reason).await;
                }
            }
            if pops.is_empty() && now - started > START_DEADLINE {
                // The accepting replica died between the record and its jobs.
                for pop in &mut record.pops {
                    pop.status = "failed".into();
                    pop.error = Some(
                        "the capture's jobs were never written (its coordinator failed while accepting it)".into(),
                    );
                }
            }
            let mut view = pops;
            view.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
            let before = (record.status, record.pops.clone());
            if !view.is_empty() {
                record.pops = view;
            }
            if record.status == CaptureStatus::Pending && record.pops.iter().any(|p| p.status != "pending") {
                record.status = CaptureStatus::Running;
            }
            if !record.pops.is_empty() && record.pops.iter().all(PopResult::is_final) {
                record.status = CaptureStatus::ConversionPending;
            }
            if (record.status, record.pops.clone()) != before {
                self.persist(&record).await;
            }
        }
        if cancel.is_cancelled() {
            return;
        }
        self.convert(record, cancel).await;
    }

    /// Fails a PoP that is still open (compare-and-swap: an agent's final report that won
    /// the race is kept).
    async fn fail_pop(&self, capture: &str, agent: &str, reason: String) {
        let failed = self
            .repo
            .update_pop(capture, agent, |pop| {
                if !pop.is_final() {
                    pop.status = "failed".into();
                    pop.error = Some(reason.clone());
                }
            })
            .await;
        if let Ok(Some(_)) = failed {
            tracing::warn!(%capture, %agent, %reason, "PoP failed");
        }
    }

    async fn convert(&self, mut record: CaptureRecord, cancel: CancellationToken) {
        let id = record.id.clone();
        let shards = loop {
            match self.repo.list_shards(&id).await {
                Ok(s) => break s,
                Err(error) => {
                    tracing::warn!(capture = %id, %error, "shards unreadable; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        for pop in &mut record.pops {
            pop.shards = shards.iter().filter(|(a, _)| *a == pop.agent_id).map(|(_, s)| s.clone()).collect();
        }
        record.status = CaptureStatus::ConversionRunning;
        self.persist(&record).await;
        let store = match record.destination_conf.as_deref() {
            Some(uri) => self.store_for_uri(uri).await,
            None => Err(StorageError::Rejected("no destination_conf".into())),
        };
        let outcome = match &store {
            Ok(store) => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = self.merge_into_bucket(store, &record) => r,
                }
            }
            Err(e) => Err(anyhow::anyhow!("{e}")),
        };
        let failures = failure_summary(&record.pops);
        let delete_shards = match outcome {
            Ok(Some(packets)) => {
                record.status = CaptureStatus::Success;
                record.packets_captured = Some(packets);
                record.error_message = failures;
                tracing::info!(capture = %id, packets, leader = %self.name, "full capture merged into the bucket");
                !self.settings.keep_shards
            }
            Ok(None) => {
                record.status = CaptureStatus::Failed;
                record.packets_captured = Some(0);
                record.error_message = Some(failures.unwrap_or_else(|| "no PoP delivered any packet".into()));
                false
            }
            Err(e) => {
                record.status = CaptureStatus::Failed;
                let mut message =
                    format!("merge into the bucket failed: {e}; the shards are kept under {}", shard_prefix(&id));
                if let Some(f) = failures {
                    message.push_str("; ");
                    message.push_str(&f);
                }
                record.error_message = Some(message);
                tracing::error!(capture = %id, error = %e, "full capture merge failed");
                false
            }
        };
        // The final status first: a leader that dies after this point leaves only garbage
        // (shards, working keys), never a capture whose shards are gone but unmerged.
        loop {
            if self.persist(&record).await {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        if delete_shards && let Ok(store) = &store {
            for shard in record.pops.iter().flat_map(|p| &p.shards) {
                if let Err(e) = store.delete(&shard.key).await {
                    tracing::warn!(capture = %id, key = %shard.key, error = %e, "shard not deleted after the merge");
                }
            }
        }
        let agents: Vec<String> = record.pops.iter().map(|p| p.agent_id.clone()).collect();
        if let Err(error) = self.repo.delete_capture_work(&id, &agents).await {
            tracing::warn!(capture = %id, %error, "working keys of a finished capture not removed");
        }
    }

    /// Downloads the shards, merges them in time order with per-PoP provenance, writes the
    /// merged object. `Ok(None)` when there is nothing to merge.
    #[tracing::instrument(name = "merge", skip_all, fields(capture = %record.id))]
    async fn merge_into_bucket(&self, store: &Arc<S3Store>, record: &CaptureRecord) -> anyhow::Result<Option<u64>> {
        let shards: Vec<(&PopResult, &ShardRef)> =
            record.pops.iter().flat_map(|p| p.shards.iter().map(move |s| (p, s))).collect();
        if shards.is_empty() {
            return Ok(None);
        }
        let dir = self.tmp_dir.join(format!("full-{}-{}", record.id, uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir_all(&dir).await?;
        let patience = self.settings.merge_retry;
        let result = async {
            let mut inputs = Vec::new();
            for (i, (pop, shard)) in shards.iter().enumerate() {
                let path = dir.join(format!("{i:05}.pcap"));
                with_retry("download a shard", patience, || async {
                    let (_, mut reader) = store.get(&shard.key).await?;
                    let mut file = tokio::fs::File::create(&path).await?;
                    tokio::io::copy(&mut reader, &mut file)
                        .await
                        .map_err(|e| StorageError::Unavailable(format!("download {}: {e}", shard.key)))?;
                    file.flush().await?;
                    Ok(())
                })
                .await?;
                inputs.push((path, pop.pop.clone(), pop.agent_id.clone(), (*shard).clone()));
            }
            let out_path = dir.join("merged");
            let comment = format!("edgecap full capture {}", record.id);
            let merged = out_path.clone();
            let format =
                if pcapng(record) { edgecap_merge::OutputFormat::PcapNg } else { edgecap_merge::OutputFormat::Pcap };
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
                let options =
                    edgecap_merge::MergeOptions { format: Some(format), salvage: false, comment: Some(comment) };
                let (out, report) = edgecap_merge::merge(readers, out, &options)?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                Ok(report)
            })
            .await??;
            let key = merged_key(record);
            with_retry("write the merged file", patience, || store.put_file(&key, &out_path)).await?;
            Ok(Some(report.packets))
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn captures() -> FullCaptures {
        let store = edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap();
        let repo = Repo::new(store);
        let job = JobRecord {
            capture_id: "c1".into(),
            account_id: "acct".into(),
            agent_id: "a1".into(),
            pop: "ord01".into(),
            destination_conf: "s3://bucket-1/p?endpoint=http://127.0.0.1:1".into(),
            filter_v1: Default::default(),
            filter_bpf: None,
            filter_bpf_hash: None,
            time_limit: 10,
            packet_limit: None,
            byte_limit: None,
            not_after_ns: 0,
            stop: false,
        };
        repo.put_job(&job).await.unwrap();
        let pop =
            PopResult { pop: "ord01".into(), agent_id: "a1".into(), status: "running".into(), ..Default::default() };
        repo.cas_pop("c1", "a1", None, &pop).await.unwrap();
        FullCaptures::new(
            repo,
            Arc::new(Registry::default()),
            "t".into(),
            Default::default(),
            Default::default(),
            std::env::temp_dir(),
        )
    }

    fn request(capture: &str, shard: &str) -> pb::UploadRequest {
        pb::UploadRequest { request_id: "r".into(), capture_id: capture.into(), shard: shard.into(), size: 10 }
    }

    #[tokio::test]
    async fn upload_grants_are_refused_for_anything_but_the_agents_own_open_capture() {
        let full = captures().await;
        for (agent, pop, req, says) in [
            ("a1", "ord01", request("other", "shard-000001.pcap"), "no job"),
            ("a2", "ord01", request("c1", "shard-000001.pcap"), "no job"),
            ("a1", "ams01", request("c1", "shard-000001.pcap"), "no job"),
            ("a1", "ord01", request("c1", "../escape.pcap"), "not acceptable"),
            ("a1", "ord01", request("c1", ".hidden"), "not acceptable"),
        ] {
            let grant = full.grant(agent, pop, req).await;
            assert!(grant.put.is_none() && grant.parts.is_empty(), "{grant:?}");
            assert!(grant.error.contains(says) && !grant.retryable, "{agent} {pop}: {}", grant.error);
        }
        // A shard reported under a key that was not granted for it is refused.
        let uploaded = pb::ShardUploaded {
            request_id: "r".into(),
            capture_id: "c1".into(),
            shard: "shard-000001.pcap".into(),
            key: "edgecap-shards/c1/ord02/a9/shard-000001.pcap".into(),
            ..Default::default()
        };
        let committed = full.commit("a1", "ord01", uploaded).await;
        assert!(committed.error.contains("was not granted") && !committed.retryable, "{}", committed.error);
        // Once the PoP is final, its capture takes no more shards.
        full.repo.update_pop("c1", "a1", |p| p.status = "done".into()).await.unwrap();
        let grant = full.grant("a1", "ord01", request("c1", "shard-000002.pcap")).await;
        assert!(grant.error.contains("already closed") && !grant.retryable, "{}", grant.error);
    }

    #[test]
    fn a_bad_credentials_file_is_a_clear_error_without_its_contents() {
        let dir = std::env::temp_dir().join(format!("edgecap-creds-{}", std::process::id()));
        std::fs::write(&dir, r#"{"bucket": {"access_key_id": "AKIA", "secret": "s3cr3t"}}"#).unwrap();
        let e = load_credentials(&dir).unwrap_err().to_string();
        std::fs::remove_file(&dir).unwrap();
        assert!(e.contains("not a JSON object of bucket") && !e.contains("s3cr3t"), "{e}");
        assert!(load_credentials(std::path::Path::new("/nonexistent/creds.json")).is_err());
    }
}
