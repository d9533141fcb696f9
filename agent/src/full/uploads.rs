//! Delivering spooled shards: ask the coordinator for a grant (presigned requests for exactly
//! one object), upload, report the upload, and delete the spooled copy only once the
//! coordinator has recorded it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use edgecap_capture::shard::ShardManifest;
use edgecap_common::lock;
use edgecap_proto::agent::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Jobs;
use super::spool::manifests;

impl Jobs {
    /// Delivers spooled shards for as long as the control stream is up. Failures wait and
    /// retry; nothing is deleted before the coordinator has recorded it.
    /// Ends when `cancel` fires (an upload in flight is dropped: the shard stays spooled, and
    /// the coordinator aborts an unfinished multipart upload it granted).
    pub(crate) async fn upload_loop(self: Arc<Self>, out: mpsc::Sender<pb::AgentMessage>, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        while !cancel.is_cancelled() {
            let this = self.clone();
            let pending = tokio::task::spawn_blocking(move || this.pending_shards()).await.unwrap_or_default();
            let mut failed = false;
            for (capture_id, manifest_path, manifest) in pending {
                let upload = self.upload_one(&out, &capture_id, &manifest_path, &manifest);
                let uploaded = tokio::select! {
                    _ = cancel.cancelled() => return,
                    uploaded = upload => uploaded,
                };
                match uploaded {
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
            let wait = if failed { backoff } else { Duration::from_millis(300) };
            if failed {
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Every completed shard in the spool, oldest capture first. Blocking.
    fn pending_shards(&self) -> Vec<(String, PathBuf, ShardManifest)> {
        let dirs: Vec<(String, PathBuf)> = lock(&self.jobs).iter().map(|(id, j)| (id.clone(), j.dir.clone())).collect();
        dirs.into_iter()
            .flat_map(|(id, dir)| manifests(&dir).into_iter().map(move |(p, m)| (id.clone(), p, m)))
            .collect()
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
        tokio::fs::remove_file(&shard_path).await.with_context(|| format!("remove {}", shard_path.display()))?;
        tokio::fs::remove_file(manifest_path).await?;
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
