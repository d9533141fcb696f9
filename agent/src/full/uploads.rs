//! Delivering spooled shards: ask the coordinator for a grant (presigned requests for exactly
//! one object), upload, report the upload, and delete the spooled copy only once the
//! coordinator has recorded it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use edgecap_capture::shard::{CHECKSUM_PART_SIZE, ShardManifest};
use edgecap_common::lock;
use edgecap_proto::agent::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::inflight::InFlight;
use super::spool::{drainable, manifests};
use super::{Job, Jobs};

/// How often the spool is scanned when nothing says it changed. A closed shard
/// ([`Jobs::shard_closed`]), an ended capture, a finished upload and a retry's time each
/// bring a scan at once; this one is a safety net. (It was 300 ms: at 300 simulated agents,
/// each running a capture, that was 1 000 scans a second, each waking a blocking thread.)
const RESCAN_EVERY: Duration = Duration::from_secs(5);
/// The least time between two scans. Shards can close faster than a scan takes (1 MiB shards
/// at a few Gbit/s: over a thousand a second), and each closed shard asks for a scan: without
/// this, one blocking thread scanned without a pause. At most ten a second, each finding
/// every shard closed since the last; a shard waits at most this much longer to go up.
pub(super) const SCAN_GAP: Duration = Duration::from_millis(100);

/// A shard ready for delivery: its manifest read and its file present.
#[derive(Debug)]
pub(super) struct Ready {
    pub capture_id: String,
    pub manifest_path: PathBuf,
    pub manifest: ShardManifest,
    pub shard_path: PathBuf,
    /// The capture's trace context, from its job file.
    pub traceparent: String,
}

/// Moves a damaged spool entry out of the upload queue (kept on disk for an operator).
pub(super) fn quarantine(path: &Path, why: &str) {
    let aside = PathBuf::from(format!("{}.damaged", path.display()));
    match std::fs::rename(path, &aside) {
        Ok(()) => tracing::warn!(path = %path.display(), %why, "damaged spool entry set aside"),
        Err(error) => {
            tracing::error!(path = %path.display(), %why, %error, "damaged spool entry could not be set aside")
        }
    }
}

/// Forgets a delivered shard: the manifest first, so that a crash in between leaves a shard
/// without a manifest (a partial shard, removed at the next start), never a manifest without
/// its shard (which would be retried forever).
pub(super) fn remove_delivered(manifest_path: &Path, shard_path: &Path) -> std::io::Result<()> {
    std::fs::remove_file(manifest_path)?;
    match std::fs::remove_file(shard_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Jobs {
    /// Delivers spooled shards for as long as the control stream is up: the shards of one
    /// capture in order, up to [`super::inflight::PARALLEL_CAPTURES`] captures at once, so one slow or
    /// unreachable bucket holds up only its own capture. A failure backs that capture off and
    /// retries; nothing is deleted before the coordinator has recorded it. Ends when `cancel`
    /// fires (an upload in flight is dropped: the shard stays spooled).
    pub(crate) async fn upload_loop(self: Arc<Self>, out: mpsc::Sender<pb::AgentMessage>, cancel: CancellationToken) {
        let mut running = InFlight::default();
        let mut backoff: HashMap<String, (tokio::time::Instant, Duration)> = HashMap::new();
        let mut last_scan: Option<tokio::time::Instant> = None;
        while !cancel.is_cancelled() && !out.is_closed() {
            let ready = if self.any_undrained() {
                if let Some(next) = last_scan.map(|at| at + SCAN_GAP).filter(|n| *n > tokio::time::Instant::now()) {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        () = out.closed() => break,
                        _ = tokio::time::sleep_until(next) => {}
                    }
                }
                last_scan = Some(tokio::time::Instant::now());
                self.spool_scans.fetch_add(1, Ordering::Relaxed);
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.scan_spool()).await.unwrap_or_default()
            } else {
                // Every capture drained: nothing can wait for delivery, and no blocking thread
                // is woken to find that out.
                self.oldest_waiting_ns.store(0, Ordering::Relaxed);
                Vec::new()
            };
            let now = tokio::time::Instant::now();
            let mut by_capture: Vec<(String, Vec<Ready>)> = Vec::new();
            for shard in ready {
                match by_capture.last_mut() {
                    Some((id, shards)) if *id == shard.capture_id => shards.push(shard),
                    _ => by_capture.push((shard.capture_id.clone(), vec![shard])),
                }
            }
            // The next scan: at the safety net's time, or sooner when a retry is due.
            let mut rescan = now + RESCAN_EVERY;
            for (capture_id, shards) in by_capture {
                let retry_at = backoff.get(&capture_id).map(|(until, _)| *until).filter(|until| *until > now);
                if let Some(until) = retry_at {
                    rescan = rescan.min(until);
                }
                if running.busy_for(&capture_id) || retry_at.is_some() {
                    continue;
                }
                let (this, out, cancel) = (self.clone(), out.clone(), cancel.clone());
                running.spawn(capture_id, async move { this.upload_capture(&out, &shards, &cancel).await });
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                // (The stream gone: this loop ends now, not at its next scan.)
                () = out.closed() => break,
                _ = tokio::time::sleep_until(rescan) => {}
                () = self.ended.notified() => {}
                () = self.shard_closed.notified() => {}
                Some((capture_id, result)) = running.next(), if !running.is_empty() => {
                    match result {
                        Ok(()) => {
                            backoff.remove(&capture_id);
                            // An ended capture's shards delivered: its PoP may be final now.
                            if lock(&self.jobs).get(capture_id.as_str()).is_some_and(Job::over) {
                                self.report_now.notify_one();
                            }
                        }
                        Err(error) => {
                            self.upload_retries.fetch_add(1, Ordering::Relaxed);
                            let wait = backoff.get(&capture_id).map_or(Duration::from_millis(500), |(_, w)| (*w * 2).min(Duration::from_secs(5)));
                            tracing::warn!(capture = %capture_id, error = format!("{error:#}"),
                                retry_in_ms = wait.as_millis() as u64, "shard upload failed; kept in the spool");
                            backoff.insert(capture_id, (tokio::time::Instant::now() + wait, wait));
                        }
                    }
                }
            }
        }
        // Uploads in flight see the token (or the closed stream) and end.
        running.shutdown().await;
    }

    /// Delivers one capture's shards in order; stops at the first failure.
    async fn upload_capture(
        &self,
        out: &mpsc::Sender<pb::AgentMessage>,
        shards: &[Ready],
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        for shard in shards {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                uploaded = self.upload_one(out, shard) => uploaded?,
            }
        }
        Ok(())
    }

    /// Every completed shard in the spool, grouped by capture, in order. Damaged entries (a
    /// manifest that does not parse, a manifest whose shard is missing) are set aside and
    /// counted, so they block nothing. Blocking.
    pub(super) fn scan_spool(&self) -> Vec<Ready> {
        let mut dirs = self.undrained();
        dirs.sort();
        let mut out = Vec::new();
        let mut oldest = u64::MAX;
        let mut empty = Vec::new();
        for (capture_id, dir, over) in dirs {
            let (good, damaged) = manifests(&dir);
            if drainable(over, &good, &damaged, &dir) {
                empty.push(capture_id);
                continue;
            }
            // Read only for a capture with something to deliver: scans come with every closed shard.
            let traceparent = if good.is_empty() {
                String::new()
            } else {
                super::spool::read_json::<super::spool::JobFile>(&dir.join("job.json"))
                    .map(|j| j.traceparent)
                    .unwrap_or_default()
            };
            for path in damaged {
                quarantine(&path, "the shard manifest does not parse");
                self.damaged.fetch_add(1, Ordering::Relaxed);
            }
            for (manifest_path, manifest) in good {
                let shard_path = dir.join(&manifest.file);
                if !shard_path.is_file() {
                    quarantine(&manifest_path, "the shard it describes is missing");
                    self.damaged.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let written = std::fs::metadata(&shard_path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(u64::MAX, |d| d.as_nanos() as u64);
                oldest = oldest.min(written);
                out.push(Ready {
                    capture_id: capture_id.clone(),
                    manifest_path,
                    manifest,
                    shard_path,
                    traceparent: traceparent.clone(),
                });
            }
        }
        self.oldest_waiting_ns.store(if oldest == u64::MAX { 0 } else { oldest }, Ordering::Relaxed);
        self.drain(empty);
        out
    }

    pub(super) async fn ask(
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

    /// Uploads one shard, in a span of the capture's trace.
    async fn upload_one(&self, out: &mpsc::Sender<pb::AgentMessage>, ready: &Ready) -> anyhow::Result<()> {
        let span = tracing::info_span!("shard_upload", capture = %ready.capture_id, shard = %ready.manifest.file);
        edgecap_telemetry::continue_trace(&span, &ready.traceparent);
        tracing::Instrument::instrument(self.upload_traced(out, ready), span).await
    }

    async fn upload_traced(&self, out: &mpsc::Sender<pb::AgentMessage>, ready: &Ready) -> anyhow::Result<()> {
        let Ready { capture_id, manifest_path, manifest, shard_path, .. } = ready;
        let size =
            tokio::fs::metadata(&shard_path).await.with_context(|| format!("stat {}", shard_path.display()))?.len();
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
                    crc32c: manifest.crc32c.clone().unwrap_or_default(),
                    part_crc32c: manifest.part_crc32c.clone(),
                    checksum_part_size: if manifest.crc32c.is_some() { CHECKSUM_PART_SIZE } else { 0 },
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
                let _ = tokio::fs::rename(manifest_path, manifest_path.with_extension("json.refused")).await;
                return Ok(());
            }
            anyhow::bail!("upload grant refused: {}", grant.error);
        }
        let mut etags = Vec::new();
        let sent = async {
            if let Some(put) = &grant.put {
                let body = Bytes::from(tokio::fs::read(&shard_path).await?);
                self.http.send(put, body).await?;
            } else {
                anyhow::ensure!(grant.part_size > 0 && !grant.parts.is_empty(), "empty upload grant");
                for (i, part) in grant.parts.iter().enumerate() {
                    let offset = i as u64 * grant.part_size;
                    let len = grant.part_size.min(size.saturating_sub(offset));
                    let body = read_range(shard_path, offset, len).await?;
                    etags.push(self.http.send(part, body).await?);
                }
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = sent {
            // The bucket found the bytes differ from the manifest's CRC32C: if the spooled
            // file no longer matches it, it was damaged on this disk and can never be
            // delivered as captured; set it aside rather than retry it for ever.
            if e.to_string().contains("BadDigest") && !self.spooled_shard_intact(shard_path, manifest).await {
                quarantine(manifest_path, "the shard's bytes no longer match its manifest's CRC32C");
                return Ok(());
            }
            return Err(e);
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
                    crc32c: manifest.crc32c.clone().unwrap_or_default(),
                    part_crc32c: if grant.part_checksums { manifest.part_crc32c.clone() } else { Vec::new() },
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
        // Counted before its manifest goes: once the directory holds no manifest the capture
        // may be drained into the finished ones, with the count it has then.
        let count = |delta: i32| {
            if let Some(job) = lock(&self.jobs).get_mut(capture_id.as_str()) {
                job.shards_uploaded = job.shards_uploaded.saturating_add_signed(delta);
            }
        };
        count(1);
        let (m, sh) = (manifest_path.clone(), shard_path.clone());
        // (A manifest still there after a failure: the shard is offered again, and counted then.)
        let removed = tokio::task::spawn_blocking(move || (remove_delivered(&m, &sh), m.exists())).await;
        if !matches!(removed, Ok((Ok(()), _)) | Ok((Err(_), false))) {
            count(-1);
        }
        removed?.0.with_context(|| format!("remove the delivered shard {}", shard_path.display()))?;
        tracing::info!(capture = %capture_id, shard = %manifest.file, key = %grant.key, packets = manifest.packets, "shard delivered");
        Ok(())
    }
}

impl Jobs {
    /// Whether a spooled shard still has the CRC32C its manifest says (true without one).
    pub(super) async fn spooled_shard_intact(&self, shard_path: &Path, manifest: &ShardManifest) -> bool {
        let Some(want) = manifest.crc32c.clone() else { return true };
        let path = shard_path.to_path_buf();
        match tokio::task::spawn_blocking(move || edgecap_capture::shard::file_crc32c(&path)).await {
            Ok(Ok(have)) => have == want,
            // Unreadable now: leave it for the next attempt to find out.
            _ => true,
        }
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

#[cfg(test)]
#[path = "uploads_tests.rs"]
mod tests;
