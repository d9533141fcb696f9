//! Full captures on the agent: record new traffic into shards spooled on local disk, and
//! deliver every shard to the user's bucket through presigned requests from the coordinator.
//!
//! Spool layout, one directory per capture (`<spool>/<capture_id>/`):
//!
//! ```text
//! job.json                 what was asked (written before the capture starts)
//! shard-000001.pcap        closed shards, fsynced ...
//! shard-000001.pcap.json   ... and complete once their manifest exists
//! end.json                 how the capture ended (counters, stop reason, error)
//! ```
//!
//! A shard's files are deleted only after the coordinator has recorded it (ShardCommitted).
//! An S3 outage therefore only makes the spool grow; the spool is bounded
//! (`--spool-max-mib`): when it is full, running captures stop (reason recorded), and what
//! was written is still delivered. After an agent restart the spool is scanned: a capture
//! cut short gets an `end.json` saying so, and its completed shards are delivered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use edgecap_capture::session::{Counters, Limits, LiveCapture, LiveConfig, StopHandle};
use edgecap_capture::shard::{ShardConfig, ShardFormat, ShardIdentity, ShardManifest, ShardWriter};
use edgecap_proto::agent::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::http::HttpClient;

/// Full-capture settings of one agent.
#[derive(Clone, Debug)]
pub struct FullCaptureConfig {
    pub spool_dir: PathBuf,
    /// Captures stop when the spool holds more than this.
    pub spool_max_bytes: u64,
    /// Shards rotate at this size or age (unless the job says otherwise), so they upload
    /// while the capture runs.
    pub rotate_bytes: u64,
    pub rotate_seconds: u32,
    /// libpcap kernel buffer.
    pub buffer_bytes: u32,
    /// How long finished captures are remembered (and re-reported after reconnects).
    pub keep_finished: Duration,
}

impl FullCaptureConfig {
    pub fn new(spool_dir: PathBuf) -> Self {
        Self {
            spool_dir,
            spool_max_bytes: 4 << 30,
            rotate_bytes: 64 << 20,
            rotate_seconds: 5,
            buffer_bytes: 32 << 20,
            keep_finished: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CountersJson {
    received: u64,
    matched: u64,
    written: u64,
    kernel_dropped: u64,
    agent_dropped: u64,
    bytes_written: u64,
}

impl From<&Counters> for CountersJson {
    fn from(c: &Counters) -> Self {
        Self {
            received: c.received,
            matched: c.matched,
            written: c.written,
            kernel_dropped: c.kernel_dropped,
            agent_dropped: c.agent_dropped,
            bytes_written: c.bytes_written,
        }
    }
}

impl From<&CountersJson> for pb::CaptureCounters {
    fn from(c: &CountersJson) -> Self {
        Self {
            received: c.received,
            matched: c.matched,
            written: c.written,
            kernel_dropped: c.kernel_dropped,
            agent_dropped: c.agent_dropped,
            bytes_written: c.bytes_written,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobFile {
    capture_id: String,
    interface: String,
    started_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct EndFile {
    counters: CountersJson,
    stop_reason: String,
    error: String,
    interrupted: bool,
}

struct Job {
    dir: PathBuf,
    stop: Option<StopHandle>,
    end: Option<EndFile>,
    shards_uploaded: u32,
    /// When the capture ended (for forgetting it later).
    ended_at: Option<Instant>,
    /// When a final state was last reported (final states are repeated only now and then).
    final_reported: Option<Instant>,
}

/// The agent's full captures.
pub struct Jobs {
    config: FullCaptureConfig,
    agent_id: String,
    pop: String,
    interface: Option<String>,
    jobs: Mutex<HashMap<String, Job>>,
    waiters: Mutex<HashMap<String, oneshot::Sender<pb::coordinator_message::Msg>>>,
    http: HttpClient,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn is_capture_id(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_manifest(name: &str) -> bool {
    name.ends_with(".pcap.json") || name.ends_with(".pcapng.json")
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Completed shards (those with a manifest) in a capture directory, in sequence order.
fn manifests(dir: &Path) -> Vec<(PathBuf, ShardManifest)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_manifest(&name) {
            continue;
        }
        match read_json::<ShardManifest>(&entry.path()) {
            Some(m) => out.push((entry.path(), m)),
            None => tracing::warn!(path = %entry.path().display(), "unreadable shard manifest skipped"),
        }
    }
    out.sort_by_key(|(_, m)| m.sequence);
    out
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => total += dir_bytes(&entry.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

impl Jobs {
    /// Opens the spool and takes over what a previous run left in it.
    pub fn open(
        config: FullCaptureConfig,
        agent_id: &str,
        pop: &str,
        interface: Option<String>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.spool_dir)
            .with_context(|| format!("create spool directory {}", config.spool_dir.display()))?;
        let mut jobs = HashMap::new();
        for entry in std::fs::read_dir(&config.spool_dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            if !is_capture_id(&name) || !dir.is_dir() || !dir.join("job.json").exists() {
                continue;
            }
            let end = match read_json::<EndFile>(&dir.join("end.json")) {
                Some(end) => end,
                None => {
                    // Cut short by a restart: the completed shards are delivered; the shard
                    // being written had no manifest and is not trusted.
                    let shards = manifests(&dir);
                    let mut counters = CountersJson::default();
                    for (_, m) in &shards {
                        counters.written += m.packets;
                        counters.bytes_written += m.bytes;
                    }
                    counters.received = counters.written;
                    counters.matched = counters.written;
                    let end = EndFile {
                        counters,
                        stop_reason: "interrupted".into(),
                        error: format!(
                            "agent restarted mid-capture; the {} completed shards are delivered, the shard being written was lost",
                            shards.len()
                        ),
                        interrupted: true,
                    };
                    write_json(&dir.join("end.json"), &end)?;
                    tracing::warn!(capture = %name, shards = shards.len(), "capture interrupted by a restart; delivering its completed shards");
                    end
                }
            };
            // Partial shards (no manifest) cannot be delivered.
            for file in std::fs::read_dir(&dir)?.flatten() {
                let n = file.file_name().to_string_lossy().into_owned();
                let shard = n.ends_with(".pcap") || n.ends_with(".pcapng");
                if shard && !dir.join(format!("{n}.json")).exists() {
                    let _ = std::fs::remove_file(file.path());
                }
            }
            jobs.insert(
                name,
                Job {
                    dir,
                    stop: None,
                    end: Some(end),
                    shards_uploaded: 0,
                    ended_at: Some(Instant::now()),
                    final_reported: None,
                },
            );
        }
        Ok(Self {
            config,
            agent_id: agent_id.to_string(),
            pop: pop.to_string(),
            interface,
            jobs: Mutex::new(jobs),
            waiters: Mutex::new(HashMap::new()),
            http: HttpClient::new()?,
        })
    }

    /// Starts a capture (idempotent: a capture already known is left alone). Blocking (opens
    /// the interface); call from a blocking thread.
    pub fn start(self: &Arc<Self>, job: pb::StartCapture) {
        let id = job.capture_id.clone();
        if !is_capture_id(&id) {
            tracing::warn!(capture = %id, "start refused: bad capture id");
            return;
        }
        if lock(&self.jobs).contains_key(&id) {
            return;
        }
        let dir = self.config.spool_dir.join(&id);
        let failed = |this: &Arc<Self>, error: String| {
            tracing::warn!(capture = %id, %error, "full capture not started");
            let end =
                EndFile { counters: CountersJson::default(), stop_reason: "failed".into(), error, interrupted: false };
            let _ = std::fs::create_dir_all(&dir);
            let _ = write_json(
                &dir.join("job.json"),
                &JobFile { capture_id: id.clone(), interface: String::new(), started_ns: now_ns() },
            );
            let _ = write_json(&dir.join("end.json"), &end);
            lock(&this.jobs).insert(
                id.clone(),
                Job {
                    dir: dir.clone(),
                    stop: None,
                    end: Some(end),
                    shards_uploaded: 0,
                    ended_at: Some(Instant::now()),
                    final_reported: None,
                },
            );
        };
        if job.not_after_ns != 0 && now_ns() > job.not_after_ns {
            return failed(self, "the start request reached the agent after its start deadline".into());
        }
        let Some(iface) = self.interface.clone() else {
            return failed(self, "this agent has no capture interface".into());
        };
        if dir_bytes(&self.config.spool_dir) >= self.config.spool_max_bytes {
            return failed(self, format!("spool {} is full", self.config.spool_dir.display()));
        }
        let filter = match job.filter.as_ref().map(crate::filter_from_pb).transpose() {
            Ok(f) => f.unwrap_or_default(),
            Err(e) => return failed(self, format!("filter refused: {e}")),
        };
        let snaplen = if job.snaplen == 0 { 262_144 } else { job.snaplen.clamp(16, 262_144) };
        let linktype = match pcap::Capture::from_device(iface.as_str()).and_then(|c| c.open()) {
            Ok(c) => c.get_datalink().0,
            Err(e) => return failed(self, format!("interface {iface}: {e}")),
        };
        if !job.filter_bpf.is_empty() {
            let checked = if linktype == 1 {
                edgecap_capture::bpf::verify(&job.filter_bpf, 1, 262_144, &job.filter_bpf_hash)
            } else {
                edgecap_capture::bpf::check(&job.filter_bpf, linktype, snaplen as i32)
            };
            if let Err(e) = checked {
                return failed(self, format!("interface {iface}: {e}"));
            }
        }
        let expr = match (filter.to_bpf(), job.filter_bpf.as_str()) {
            (v1, "") => v1,
            (v1, bpf) if v1.is_empty() => bpf.to_string(),
            (v1, bpf) => format!("({v1}) and ({bpf})"),
        };
        let filter_hash = if expr.is_empty() {
            String::new()
        } else {
            match edgecap_capture::bpf::check(&expr, linktype, snaplen as i32) {
                Ok(c) => c.hash,
                Err(e) => return failed(self, e.to_string()),
            }
        };
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| {
            write_json(
                &dir.join("job.json"),
                &JobFile { capture_id: id.clone(), interface: iface.clone(), started_ns: now_ns() },
            )
        }) {
            return failed(self, format!("spool: {e}"));
        }
        let mut config = LiveConfig::new(&iface, &expr);
        config.snaplen = snaplen;
        config.buffer_size = self.config.buffer_bytes;
        config.limits = Limits {
            time: Some(Duration::from_millis(job.time_limit_ms.max(1))),
            packets: (job.packet_limit > 0).then_some(job.packet_limit),
            bytes: (job.byte_limit > 0).then_some(job.byte_limit),
        };
        let shards = ShardWriter::new(
            ShardConfig {
                path: dir.join("shard.pcap"),
                format: ShardFormat::Pcap,
                rotate_bytes: Some(if job.rotate_bytes > 0 { job.rotate_bytes } else { self.config.rotate_bytes }),
                rotate_every: Some(Duration::from_secs(u64::from(if job.rotate_seconds > 0 {
                    job.rotate_seconds
                } else {
                    self.config.rotate_seconds
                }))),
                checksum: true,
            },
            ShardIdentity {
                capture_id: id.clone(),
                pop: self.pop.clone(),
                agent: self.agent_id.clone(),
                interface: iface.clone(),
                linktype: linktype as u16,
                snaplen,
                filter: expr.clone(),
                filter_hash,
            },
        );
        let live = match LiveCapture::start(config, Box::new(shards)) {
            Ok(live) => live,
            Err(e) => return failed(self, e.to_string()),
        };
        tracing::info!(capture = %id, %iface, filter = %expr, "full capture started");
        lock(&self.jobs).insert(
            id.clone(),
            Job {
                dir: dir.clone(),
                stop: Some(live.stop_handle()),
                end: None,
                shards_uploaded: 0,
                ended_at: None,
                final_reported: None,
            },
        );
        let this = self.clone();
        std::thread::spawn(move || {
            let counters = live.wait();
            let (stop_reason, error) = match &counters.stop_reason {
                Some(edgecap_capture::session::StopReason::Failed(e)) => ("failed".to_string(), e.clone()),
                Some(r) => (r.to_string(), String::new()),
                None => ("unknown".to_string(), String::new()),
            };
            let mut end = EndFile { counters: (&counters).into(), stop_reason, error, interrupted: false };
            let mut jobs = lock(&this.jobs);
            if let Some(job) = jobs.get_mut(&id) {
                if let Some(previous) = job.end.take().filter(|e| !e.error.is_empty()) {
                    // A spool-full stop recorded its reason first.
                    end.error = previous.error;
                    end.stop_reason = previous.stop_reason;
                }
                if let Err(e) = write_json(&job.dir.join("end.json"), &end) {
                    tracing::error!(capture = %id, error = %e, "could not record the end of a capture");
                }
                tracing::info!(capture = %id, line = %counters.line(), "full capture ended");
                job.end = Some(end);
                job.stop = None;
                job.ended_at = Some(Instant::now());
            }
        });
    }

    /// Ends a running capture early (what was captured is kept and delivered).
    pub fn stop(&self, capture_id: &str) {
        if let Some(stop) = lock(&self.jobs).get(capture_id).and_then(|j| j.stop.clone()) {
            tracing::info!(capture = %capture_id, "stop requested");
            stop.stop();
        }
    }

    /// Stops every running capture (agent shutdown): their ends are recorded normally.
    pub fn stop_all(&self) {
        for job in lock(&self.jobs).values() {
            if let Some(stop) = &job.stop {
                stop.stop();
            }
        }
    }

    /// Routes a grant or commit answer to the upload waiting for it.
    pub fn deliver(&self, request_id: &str, msg: pb::coordinator_message::Msg) {
        if let Some(tx) = lock(&self.waiters).remove(request_id) {
            let _ = tx.send(msg);
        }
    }

    /// Progress of every capture worth reporting now. `all_final` re-reports finished ones
    /// (after a reconnect); otherwise they are repeated every 30 s.
    pub fn reports(&self, all_final: bool) -> Vec<pb::CaptureReport> {
        let spool = dir_bytes(&self.config.spool_dir);
        let spool_full = spool > self.config.spool_max_bytes;
        let mut out = Vec::new();
        let mut jobs = lock(&self.jobs);
        let keep = self.config.keep_finished;
        // Spooled shards per capture, read once for both the clean-up and the reports.
        let pending: HashMap<String, u32> =
            jobs.iter().map(|(id, job)| (id.clone(), manifests(&job.dir).len() as u32)).collect();
        jobs.retain(|id, job| {
            let pending_shards = pending[id];
            let forget = pending_shards == 0 && job.ended_at.is_some_and(|t| t.elapsed() > keep);
            if forget {
                let _ = std::fs::remove_dir_all(&job.dir);
                tracing::debug!(capture = %id, "finished capture forgotten");
            }
            !forget
        });
        for (id, job) in jobs.iter_mut() {
            let pending_shards = pending[id];
            let report = match (&job.stop, &job.end) {
                (Some(stop), _) => {
                    if spool_full {
                        tracing::warn!(capture = %id, spool, "spool full: stopping the capture");
                        job.end = Some(EndFile {
                            counters: CountersJson::default(),
                            stop_reason: "spool_full".into(),
                            error: format!(
                                "agent spool full ({} MiB, object store unreachable?); capture stopped early, everything written is delivered",
                                spool >> 20
                            ),
                            interrupted: false,
                        });
                        stop.stop();
                    }
                    let c = stop.counters();
                    pb::CaptureReport {
                        capture_id: id.clone(),
                        state: "running".into(),
                        counters: Some((&CountersJson::from(&c)).into()),
                        shards_closed: job.shards_uploaded + pending_shards,
                        shards_uploaded: job.shards_uploaded,
                        spool_bytes: spool,
                        ..Default::default()
                    }
                }
                (None, Some(end)) => {
                    let state = if pending_shards > 0 {
                        "uploading"
                    } else if end.error.is_empty() {
                        "done"
                    } else {
                        "failed"
                    };
                    if pending_shards == 0 {
                        let due = all_final || job.final_reported.is_none_or(|t| t.elapsed() > Duration::from_secs(30));
                        if !due {
                            continue;
                        }
                        job.final_reported = Some(Instant::now());
                    }
                    pb::CaptureReport {
                        capture_id: id.clone(),
                        state: state.into(),
                        counters: Some((&end.counters).into()),
                        stop_reason: end.stop_reason.clone(),
                        error: end.error.clone(),
                        shards_closed: job.shards_uploaded + pending_shards,
                        shards_uploaded: job.shards_uploaded,
                        spool_bytes: spool,
                        interrupted: end.interrupted,
                    }
                }
                (None, None) => continue,
            };
            out.push(report);
        }
        out
    }

    /// Delivers spooled shards for as long as the control stream is up. Failures wait and
    /// retry; nothing is deleted before the coordinator has recorded it.
    pub async fn upload_loop(self: Arc<Self>, out: mpsc::Sender<pb::AgentMessage>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let pending: Vec<(String, PathBuf, ShardManifest)> = {
                let jobs = lock(&self.jobs);
                jobs.iter()
                    .flat_map(|(id, job)| manifests(&job.dir).into_iter().map(move |(p, m)| (id.clone(), p, m)))
                    .collect()
            };
            let mut failed = false;
            for (capture_id, manifest_path, manifest) in pending {
                match self.upload_one(&out, &capture_id, &manifest_path, &manifest).await {
                    Ok(()) => backoff = Duration::from_millis(500),
                    Err(error) => {
                        tracing::warn!(capture = %capture_id, shard = %manifest.file, error = format!("{error:#}"),
                            retry_in_ms = backoff.as_millis() as u64, "shard upload failed; kept in the spool");
                        failed = true;
                        break;
                    }
                }
            }
            if out.is_closed() {
                return;
            }
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }

    async fn ask(
        &self,
        out: &mpsc::Sender<pb::AgentMessage>,
        request_id: &str,
        msg: pb::agent_message::Msg,
    ) -> anyhow::Result<pb::coordinator_message::Msg> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(request_id.to_string(), tx);
        let result = async {
            out.send(pb::AgentMessage { msg: Some(msg) })
                .await
                .map_err(|_| anyhow::anyhow!("control stream closed"))?;
            tokio::time::timeout(Duration::from_secs(60), rx)
                .await
                .map_err(|_| anyhow::anyhow!("no answer from the coordinator within 60 s"))?
                .map_err(|_| anyhow::anyhow!("control stream closed"))
        }
        .await;
        lock(&self.waiters).remove(request_id);
        result
    }

    #[tracing::instrument(name = "shard_upload", skip_all, fields(capture = %capture_id, shard = %manifest.file))]
    async fn upload_one(
        &self,
        out: &mpsc::Sender<pb::AgentMessage>,
        capture_id: &str,
        manifest_path: &Path,
        manifest: &ShardManifest,
    ) -> anyhow::Result<()> {
        let dir = manifest_path.parent().context("manifest without a directory")?;
        let shard_path = dir.join(&manifest.file);
        let size = std::fs::metadata(&shard_path).with_context(|| format!("stat {}", shard_path.display()))?.len();
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let grant = match self
            .ask(
                out,
                &request_id,
                pb::agent_message::Msg::UploadRequest(pb::UploadRequest {
                    request_id: request_id.clone(),
                    capture_id: capture_id.to_string(),
                    shard: manifest.file.clone(),
                    size,
                }),
            )
            .await?
        {
            pb::coordinator_message::Msg::UploadGrant(g) => g,
            other => anyhow::bail!("unexpected answer {other:?}"),
        };
        if !grant.error.is_empty() {
            if !grant.retryable {
                // The coordinator will never take this shard (capture gone or finished):
                // keep it on disk for an operator, out of the upload queue.
                tracing::error!(capture = %capture_id, shard = %manifest.file, error = %grant.error, "shard refused for good; set aside");
                let _ = std::fs::rename(manifest_path, manifest_path.with_extension("json.refused"));
                return Ok(());
            }
            anyhow::bail!("upload grant refused: {}", grant.error);
        }
        let mut etags = Vec::new();
        if let Some(put) = &grant.put {
            let body = Bytes::from(tokio::fs::read(&shard_path).await?);
            self.http.send(put, body).await?;
        } else {
            anyhow::ensure!(grant.part_size > 0 && !grant.parts.is_empty(), "empty upload grant");
            for (i, part) in grant.parts.iter().enumerate() {
                let offset = i as u64 * grant.part_size;
                let len = grant.part_size.min(size.saturating_sub(offset));
                let body = read_range(&shard_path, offset, len).await?;
                etags.push(self.http.send(part, body).await?);
            }
        }
        let committed = self
            .ask(
                out,
                &request_id,
                pb::agent_message::Msg::ShardUploaded(pb::ShardUploaded {
                    request_id: request_id.clone(),
                    capture_id: capture_id.to_string(),
                    shard: manifest.file.clone(),
                    key: grant.key.clone(),
                    upload_id: grant.upload_id.clone(),
                    part_etags: etags,
                    packets: manifest.packets,
                    bytes: manifest.bytes,
                    file_bytes: size,
                    first_ts_ns: manifest.first_ts_ns.unwrap_or(0),
                    last_ts_ns: manifest.last_ts_ns.unwrap_or(0),
                    sha256: manifest.sha256.clone().unwrap_or_default(),
                    interface: manifest.identity.interface.clone(),
                    filter: manifest.identity.filter.clone(),
                }),
            )
            .await?;
        match committed {
            pb::coordinator_message::Msg::ShardCommitted(c) if c.error.is_empty() => {}
            pb::coordinator_message::Msg::ShardCommitted(c) => {
                anyhow::bail!("coordinator did not record the shard: {}", c.error)
            }
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
        std::fs::remove_file(&shard_path).with_context(|| format!("remove {}", shard_path.display()))?;
        std::fs::remove_file(manifest_path)?;
        if let Some(job) = lock(&self.jobs).get_mut(capture_id) {
            job.shards_uploaded += 1;
        }
        tracing::info!(capture = %capture_id, shard = %manifest.file, key = %grant.key, packets = manifest.packets, "shard delivered");
        Ok(())
    }
}

async fn read_range(path: &Path, offset: u64, len: u64) -> anyhow::Result<Bytes> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}
