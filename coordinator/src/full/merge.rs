//! The end of a full capture (leader only): collect the delivered shards, merge them in
//! time order (with per-PoP provenance for pcapng) into the user's bucket, write the final
//! status, then delete the shards and the capture's working keys.
//!
//! Cancellation (the leader steps down or the coordinator stops) reaches every step: the
//! download and upload stop, the blocking merge thread stops at its next write, the scratch
//! directory is removed and a multipart upload of the merged file is aborted before the
//! runner returns. The next leader does the merge again.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgecap_merge::WriteBehind;
use edgecap_storage::{ObjectStore, StorageError};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::follow::failure_summary;
use super::from_bucket::{self, FromBucketError};
use super::{FullCaptures, shard_prefix};
use crate::model::{CaptureRecord, CaptureStatus, OutputFormat, ShardRef};

/// Shards downloaded at once for a merge through scratch: each GET waits a round trip or
/// more before its first byte (~30 ms against s3s-fs on loopback, tens of ms on AWS), so one
/// after another 300 PoPs' shards took 9 s; at most this many files and connections open.
const DOWNLOADS_AT_ONCE: usize = 16;

/// Why a merge did not produce a file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MergeError {
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Other(String),
}

/// A writer that fails once `cancelled` is set, so a blocking merge stops at its next write.
struct Cancellable<W> {
    inner: W,
    cancelled: Arc<AtomicBool>,
}

impl<W: Write> Write for Cancellable<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("merge cancelled"));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl FullCaptures {
    pub(super) async fn convert(&self, mut record: CaptureRecord, cancel: CancellationToken) {
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
        // The shards stay in their own keys (the record keeps a constant size per PoP); the
        // merge works on a copy that lists them.
        let mut merging = record.clone();
        merging.attach_shards(&shards);
        record.status = CaptureStatus::ConversionRunning;
        if self.persist(&mut record).await && record.status.is_final() {
            self.abort_open_uploads(&id).await;
            return;
        }
        let store: Result<Arc<dyn ObjectStore>, _> = match record.destination_conf.as_deref() {
            Some(uri) => self.buckets.store_for_uri(uri).await.map(|s| s as Arc<dyn ObjectStore>),
            None => Err(StorageError::Rejected("no destination_conf".into())),
        };
        let merge_started = std::time::Instant::now();
        let outcome = match &store {
            Ok(store) => self.merge_into_bucket(store, &merging, &cancel).await,
            Err(e) => Err(MergeError::Other(e.to_string())),
        };
        self.metrics.merge(merge_started.elapsed().as_secs_f64());
        let failures = failure_summary(&merging.pops);
        let delete_shards = match outcome {
            Err(MergeError::Cancelled) => return,
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
            if self.persist(&mut record).await {
                self.metrics.capture_finished(crate::model::CaptureType::Full, record.status);
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        if delete_shards && let Ok(store) = &store {
            // In one request per 1000 (one each had been 300 requests for 300 PoPs, still
            // running when the next capture started).
            let keys: Vec<String> = merging.pops.iter().flat_map(|p| &p.shards).map(|s| s.key.clone()).collect();
            if let Err(e) = store.delete_many(&keys).await {
                tracing::warn!(capture = %id, shards = keys.len(), error = %e, "shards not deleted after the merge");
            }
        }
        // A leader that dies before this leaves them to the bucket's lifecycle rule; retention
        // forgets their records with the capture.
        self.abort_open_uploads(&id).await;
        let agents: Vec<String> = record.pops.iter().map(|p| p.agent_id.clone()).collect();
        if let Err(error) = self.repo.delete_capture_work(&id, &agents).await {
            tracing::warn!(capture = %id, %error, "working keys of a finished capture not removed");
        }
    }

    /// Merges the shards in time order with per-PoP provenance into the merged object:
    /// straight from the bucket when it can ([`super::from_bucket`]), else through the
    /// coordinator's scratch disk. `Ok(None)` when there is nothing to merge.
    #[tracing::instrument(name = "merge", skip_all, fields(capture = %record.id))]
    pub(crate) async fn merge_into_bucket(
        &self,
        store: &Arc<dyn ObjectStore>,
        record: &CaptureRecord,
        cancel: &CancellationToken,
    ) -> Result<Option<u64>, MergeError> {
        let agents = from_bucket::by_agent(record);
        if agents.is_empty() {
            return Ok(None);
        }
        if agents.len() <= self.settings.merge_streams {
            match self.merge_from_bucket(store, record, &agents, cancel).await {
                Ok(packets) => return Ok(Some(packets)),
                Err(FromBucketError::HeaderChanged(why)) => {
                    tracing::info!(capture = %record.id, %why, "merging through scratch instead");
                }
                Err(FromBucketError::Cancelled) => return Err(MergeError::Cancelled),
                Err(FromBucketError::Storage(e)) => return Err(e.into()),
                Err(FromBucketError::Merge(e)) => return Err(MergeError::Other(e)),
            }
        }
        self.merge_through_scratch(store, record, agents, cancel).await.map(Some)
    }

    /// The merge from the bucket, tried again while the bucket is unavailable (each attempt
    /// starts over, its multipart upload aborted), for as long as `merge_retry` allows.
    async fn merge_from_bucket(
        &self,
        store: &Arc<dyn ObjectStore>,
        record: &CaptureRecord,
        agents: &[from_bucket::AgentShards],
        cancel: &CancellationToken,
    ) -> Result<u64, FromBucketError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(500);
        loop {
            let options = merge_options(record);
            let attempt = from_bucket::merge(
                store.clone(),
                store.clone(),
                agents.to_vec(),
                &record.merged_key(),
                options,
                cancel,
            )
            .await;
            match attempt {
                Ok(report) => return Ok(report.packets),
                Err(FromBucketError::Storage(e))
                    if e.is_retryable() && started.elapsed() < self.settings.merge_retry =>
                {
                    tracing::warn!(capture = %record.id, error = %e, "merge from the bucket failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(FromBucketError::Cancelled),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Downloads the shards to a scratch directory, merges them (in stages beyond the
    /// file-descriptor limit), uploads the merged file. The scratch directory is removed
    /// whatever happens, cancellation included.
    async fn merge_through_scratch(
        &self,
        store: &Arc<dyn ObjectStore>,
        record: &CaptureRecord,
        agents: Vec<from_bucket::AgentShards>,
        cancel: &CancellationToken,
    ) -> Result<u64, MergeError> {
        let dir = self.tmp_dir.join(format!("full-{}-{}", record.id, uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir_all(&dir).await.map_err(StorageError::Io)?;
        // Not raced against `cancel`: every step below stops on it by itself and cleans up
        // what it started (dropping the future would leave a merge thread or an upload behind).
        let result = self.merge_in(&dir, store, record, agents, cancel).await;
        if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), %error, "merge scratch directory not removed");
        }
        result
    }

    async fn merge_in(
        &self,
        dir: &Path,
        store: &Arc<dyn ObjectStore>,
        record: &CaptureRecord,
        agents: Vec<from_bucket::AgentShards>,
        cancel: &CancellationToken,
    ) -> Result<u64, MergeError> {
        use futures::StreamExt as _;
        let patience = self.settings.merge_retry;
        let mut inputs = Vec::new();
        let mut downloads = Vec::new();
        for agent in agents {
            let mut files = Vec::new();
            for shard in agent.shards {
                let path = dir.join(format!("{:05}.pcap", downloads.len()));
                files.push(path.clone());
                downloads.push((shard, path));
            }
            inputs.push(super::stage::AgentInput { name: agent.name, files, provenance: agent.provenance });
        }
        // The first failure stops the others, which are waited for: none then writes into
        // the scratch directory while it is removed (partial files go with it).
        let stop = cancel.child_token();
        let mut downloading = futures::stream::iter(downloads)
            .map(|(shard, path)| download_to(store, shard, path, patience, &stop))
            .buffer_unordered(DOWNLOADS_AT_ONCE);
        let mut failed = None;
        while let Some(downloaded) = downloading.next().await {
            if failed.is_none()
                && let Err(e) = downloaded
            {
                stop.cancel();
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)?;
        let out_path = dir.join("merged");
        let report = self.merge_files(record, inputs, &out_path, cancel).await?;
        let key = record.merged_key();
        with_retry("write the merged file", patience, cancel, || store.put_file(&key, &out_path, cancel)).await?;
        Ok(report.packets)
    }

    /// Runs the merge engine on a blocking thread; a cancel stops it at its next write.
    async fn merge_files(
        &self,
        record: &CaptureRecord,
        agents: Vec<super::stage::AgentInput>,
        out_path: &Path,
        cancel: &CancellationToken,
    ) -> Result<edgecap_merge::MergeReport, MergeError> {
        let merged = out_path.to_path_buf();
        let options = merge_options(record);
        let cancelled = Arc::new(AtomicBool::new(false));
        let flag = cancelled.clone();
        let fan_in = match self.settings.merge_fan_in {
            0 => super::stage::fan_in(),
            n => n,
        };
        let scratch = out_path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.tmp_dir.clone());
        let mut work = tokio::task::spawn_blocking(move || -> anyhow::Result<edgecap_merge::MergeReport> {
            let file = std::fs::File::create(&merged)?;
            // Written on a thread of its own, beside the merge (docs/merge.md, "Memory").
            let out = WriteBehind::new(Cancellable { inner: file, cancelled: flag }, "merge-writer", 256 << 10, 4)?;
            let (out, report) = super::stage::merge(agents, out, &options, fan_in, &scratch)?;
            out.finish()?.inner.sync_all()?;
            Ok(report)
        });
        let joined = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                cancelled.store(true, Ordering::Relaxed);
                let _ = (&mut work).await;
                return Err(MergeError::Cancelled);
            }
            joined = &mut work => joined,
        };
        joined
            .map_err(|e| MergeError::Other(format!("merge thread: {e}")))?
            .map_err(|e| MergeError::Other(e.to_string()))
    }
}

/// Downloads one shard to `path`, no more than the size recorded at commit.
async fn download_to(
    store: &Arc<dyn ObjectStore>,
    shard: ShardRef,
    path: std::path::PathBuf,
    patience: Duration,
    cancel: &CancellationToken,
) -> Result<(), MergeError> {
    // A download dropped half-way leaves only a partial file in the scratch directory.
    with_retry("download a shard", patience, cancel, || async {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(StorageError::Cancelled),
            downloaded = async {
                let (_, reader) = store.get(&shard.key).await?;
                let mut file = tokio::fs::File::create(&path).await?;
                // No more than the size recorded at commit: a bucket endpoint cannot
                // fill the coordinator's disk with an endless answer.
                let mut bounded = tokio::io::AsyncReadExt::take(reader, shard.file_bytes + 1);
                let copied = tokio::io::copy(&mut bounded, &mut file)
                    .await
                    .map_err(|e| StorageError::Unavailable(format!("download {}: {e}", shard.key)))?;
                if copied != shard.file_bytes {
                    return Err(from_bucket::size_differs(&shard, copied));
                }
                file.flush().await?;
                Ok(())
            } => downloaded,
        }
    })
    .await
}

/// The merged file's format and comment.
fn merge_options(record: &CaptureRecord) -> edgecap_merge::MergeOptions {
    let format = match record.output_format {
        OutputFormat::Pcap => edgecap_merge::OutputFormat::Pcap,
        OutputFormat::Pcapng => edgecap_merge::OutputFormat::PcapNg,
    };
    let comment = Some(format!("edgecap full capture {}", record.id));
    edgecap_merge::MergeOptions { format: Some(format), salvage: false, comment }
}

async fn with_retry<T, F, Fut>(
    what: &str,
    patience: Duration,
    cancel: &CancellationToken,
    mut op: F,
) -> Result<T, MergeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let start = Instant::now();
    let mut wait = Duration::from_millis(500);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(StorageError::Cancelled) => return Err(MergeError::Cancelled),
            Err(e) if e.is_retryable() && start.elapsed() < patience => {
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(MergeError::Cancelled),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
