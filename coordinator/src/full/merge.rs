//! The end of a full capture (leader only): collect the delivered shards, merge them in
//! time order (with per-PoP provenance for pcapng) into the user's bucket, write the final
//! status, then delete the shards and the capture's working keys.
//!
//! Cancellation (the leader steps down or the coordinator stops) reaches every step: the
//! download and upload stop, the blocking merge thread stops at its next write, the scratch
//! directory is removed and a multipart upload of the merged file is aborted before the
//! runner returns. The next leader does the merge again.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgecap_storage::{ObjectStore, StorageError};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::follow::failure_summary;
use super::{FullCaptures, shard_prefix};
use crate::model::{CaptureRecord, CaptureStatus, OutputFormat, PopResult, ShardRef};

/// Why a merge did not produce a file.
#[derive(Debug, thiserror::Error)]
enum MergeError {
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
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "merge cancelled"));
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
            for shard in merging.pops.iter().flat_map(|p| &p.shards) {
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
    /// merged object. `Ok(None)` when there is nothing to merge. The scratch directory is
    /// removed whatever happens, cancellation included.
    #[tracing::instrument(name = "merge", skip_all, fields(capture = %record.id))]
    async fn merge_into_bucket(
        &self,
        store: &Arc<dyn ObjectStore>,
        record: &CaptureRecord,
        cancel: &CancellationToken,
    ) -> Result<Option<u64>, MergeError> {
        let shards: Vec<(&PopResult, &ShardRef)> =
            record.pops.iter().flat_map(|p| p.shards.iter().map(move |s| (p, s))).collect();
        if shards.is_empty() {
            return Ok(None);
        }
        let dir = self.tmp_dir.join(format!("full-{}-{}", record.id, uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir_all(&dir).await.map_err(StorageError::Io)?;
        // Not raced against `cancel`: every step below stops on it by itself and cleans up
        // what it started (dropping the future would leave a merge thread or an upload behind).
        let result = self.merge_in(&dir, store, record, &shards, cancel).await;
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
        shards: &[(&PopResult, &ShardRef)],
        cancel: &CancellationToken,
    ) -> Result<Option<u64>, MergeError> {
        let patience = self.settings.merge_retry;
        let mut inputs = Vec::new();
        for (i, (pop, shard)) in shards.iter().enumerate() {
            let path = dir.join(format!("{i:05}.pcap"));
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
                            let held = if copied > shard.file_bytes {
                                format!("more than {}", shard.file_bytes)
                            } else {
                                copied.to_string()
                            };
                            return Err(StorageError::Rejected(format!(
                                "shard {} has {held} bytes in the bucket, {} were committed",
                                shard.key, shard.file_bytes
                            )));
                        }
                        file.flush().await?;
                        Ok(())
                    } => downloaded,
                }
            })
            .await?;
            inputs.push((path, pop.pop.clone(), pop.agent_id.clone(), (*shard).clone()));
        }
        let out_path = dir.join("merged");
        let report = self.merge_files(record, inputs, &out_path, cancel).await?;
        let key = record.merged_key();
        with_retry("write the merged file", patience, cancel, || store.put_file(&key, &out_path, cancel)).await?;
        Ok(Some(report.packets))
    }

    /// Runs the merge engine on a blocking thread; a cancel stops it at its next write.
    async fn merge_files(
        &self,
        record: &CaptureRecord,
        inputs: Vec<(std::path::PathBuf, String, String, ShardRef)>,
        out_path: &Path,
        cancel: &CancellationToken,
    ) -> Result<edgecap_merge::MergeReport, MergeError> {
        let comment = format!("edgecap full capture {}", record.id);
        let merged = out_path.to_path_buf();
        let format = match record.output_format {
            OutputFormat::Pcap => edgecap_merge::OutputFormat::Pcap,
            OutputFormat::Pcapng => edgecap_merge::OutputFormat::PcapNg,
        };
        // Per-PoP counters for the pcapng interface statistics, and each PoP's clock: described
        // on its interface, and applied to its timestamps when the request asked for it.
        let counters: HashMap<String, (u64, u64)> = record
            .pops
            .iter()
            .map(|p| (p.agent_id.clone(), (p.received, p.kernel_dropped + p.agent_dropped)))
            .collect();
        let correct = record.clock_correction;
        let clocks: HashMap<String, (Option<String>, i64)> = record
            .pops
            .iter()
            .map(|p| {
                let description = p.clock_offset_us.map(|o| {
                    let applied = if correct { ", corrected in this file" } else { "" };
                    format!(
                        "clock offset {o:+} us +/- {} us (coordinator minus PoP){applied}",
                        p.clock_uncertainty_us.unwrap_or(0)
                    )
                });
                let shift = if correct { p.clock_offset_us.unwrap_or(0).saturating_mul(1000) } else { 0 };
                (p.agent_id.clone(), (description, shift))
            })
            .collect();
        let cancelled = Arc::new(AtomicBool::new(false));
        let flag = cancelled.clone();
        let fan_in = match self.settings.merge_fan_in {
            0 => super::stage::fan_in(),
            n => n,
        };
        let scratch = out_path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.tmp_dir.clone());
        let mut work = tokio::task::spawn_blocking(move || -> anyhow::Result<edgecap_merge::MergeReport> {
            // One input per agent: its shards follow each other in time and are read in turn.
            let mut agents: Vec<super::stage::AgentInput> = Vec::new();
            for (path, pop, agent, shard) in inputs {
                match agents.last_mut() {
                    Some(last) if last.provenance.agent == agent => last.files.push(path),
                    _ => {
                        let (received, dropped) = counters.get(&agent).copied().unwrap_or_default();
                        let (description, ts_offset_ns) = clocks.get(&agent).cloned().unwrap_or_default();
                        agents.push(super::stage::AgentInput {
                            name: shard.key,
                            files: vec![path],
                            provenance: edgecap_merge::Provenance {
                                pop,
                                agent,
                                iface: (!shard.interface.is_empty()).then_some(shard.interface),
                                filter: (!shard.filter.is_empty()).then_some(shard.filter),
                                received: Some(received),
                                dropped: Some(dropped),
                                description,
                                ts_offset_ns,
                            },
                        });
                    }
                }
            }
            let file = std::fs::File::create(&merged)?;
            let out = BufWriter::with_capacity(64 << 10, Cancellable { inner: file, cancelled: flag });
            let options = edgecap_merge::MergeOptions { format: Some(format), salvage: false, comment: Some(comment) };
            let (out, report) = super::stage::merge(agents, out, &options, fan_in, &scratch)?;
            out.into_inner().map_err(|e| e.into_error())?.inner.sync_all()?;
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
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use edgecap_storage::ObjectStore;

    use super::*;
    use crate::agents::Registry;
    use crate::model::{PopStatus, ShardRef};
    use crate::store::Repo;

    #[tokio::test]
    async fn a_shard_larger_in_the_bucket_than_committed_is_not_downloaded_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            edgecap_storage::open(&edgecap_storage::StorageConfig::LocalDir { root: dir.path().join("bucket") })
                .await
                .unwrap();
        // What the bucket now holds is 1 MiB; the agent committed 100 bytes.
        store.put("edgecap-shards/c1/p/a/shard-000001.pcap", Bytes::from(vec![0u8; 1 << 20])).await.unwrap();
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let full = FullCaptures::new(
            repo,
            Arc::new(Registry::default()),
            "t".into(),
            Default::default(),
            Default::default(),
            dir.path().join("tmp"),
            Default::default(),
        );
        let shard = ShardRef {
            key: "edgecap-shards/c1/p/a/shard-000001.pcap".into(),
            packets: 1,
            bytes: 60,
            file_bytes: 100,
            first_ts_ns: 1,
            last_ts_ns: 1,
            sha256: String::new(),
            crc32c: String::new(),
            interface: String::new(),
            filter: String::new(),
        };
        let mut pop = PopResult::new("p", "a", PopStatus::Done);
        pop.shards = vec![shard];
        let record = CaptureRecord::from_request(
            "acct",
            crate::model::CaptureRequest::for_test(crate::model::CaptureType::Full),
            time::OffsetDateTime::now_utc(),
        );
        let record = CaptureRecord { pops: vec![pop], ..record };
        let outcome = full.merge_into_bucket(&store, &record, &CancellationToken::new()).await;
        let error = outcome.unwrap_err().to_string();
        assert!(error.contains("more than 100 bytes") && error.contains("100 were committed"), "{error}");
        // The scratch directory is gone, and nothing was read past the bound.
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).map(|d| d.count()).unwrap_or(0), 0);
    }
}
