//! The merge straight from the bucket: each agent's shards are read with streaming GETs, one
//! after another, a few chunks ahead of the merge; the merged file goes up while it is
//! produced: as one streamed PUT when its size is known beforehand ([`merged_size`]), else as
//! a multipart upload. No copy of the inputs or of the output on the coordinator's
//! disk, and the download, the merge and the upload overlap instead of following each other.
//! Memory is bounded: [`PREFETCH`] chunks of [`CHUNK`] bytes per agent, and [`PARTS_AHEAD`]
//! parts of [`PART_SIZE`] waiting for the upload.
//!
//! It falls back to the merge on scratch (`merge.rs`, `stage.rs`) when an agent's shards do
//! not share one file header (its capture settings changed between shards), and is not used
//! for more agents than [`crate::config::FullSettings::merge_streams`] (each holds a GET open).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use edgecap_merge::{MergeInput, MergeOptions, MergeReport, Provenance};
use edgecap_storage::s3::PART_SIZE;
use edgecap_storage::{ObjectStore, Piece, StorageError};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stage::PCAP_HEADER;
use crate::model::{CaptureRecord, ShardRef};

/// Bytes read from a shard's GET at a time.
pub(super) const CHUNK: usize = 256 << 10;
/// Chunks read ahead of the merge, per agent.
pub(super) const PREFETCH: usize = 4;
/// Parts of the merged file waiting for their upload.
pub(super) const PARTS_AHEAD: usize = 2;

/// One agent's shards, in time order, and where they came from.
#[derive(Clone, Debug)]
pub(super) struct AgentShards {
    pub name: String,
    pub shards: Vec<ShardRef>,
    pub provenance: Provenance,
}

/// Each agent's shards in order (one input per agent: its shards follow each other in time),
/// with where its packets came from: its PoP's counters for the pcapng interface statistics,
/// and its clock, described on its interface and applied to its timestamps when the request
/// asked for it.
pub(super) fn by_agent(record: &CaptureRecord) -> Vec<AgentShards> {
    let correct = record.clock_correction;
    let mut agents: Vec<AgentShards> = Vec::new();
    for pop in &record.pops {
        for shard in &pop.shards {
            match agents.last_mut() {
                Some(last) if last.provenance.agent == pop.agent_id => last.shards.push(shard.clone()),
                _ => {
                    let description = pop.clock_offset_us.map(|o| {
                        let applied = if correct { ", corrected in this file" } else { "" };
                        format!(
                            "clock offset {o:+} us +/- {} us (coordinator minus PoP){applied}",
                            pop.clock_uncertainty_us.unwrap_or(0)
                        )
                    });
                    let shift = if correct { pop.clock_offset_us.unwrap_or(0).saturating_mul(1000) } else { 0 };
                    agents.push(AgentShards {
                        name: shard.key.clone(),
                        shards: vec![shard.clone()],
                        provenance: edgecap_merge::Provenance {
                            pop: pop.pop.clone(),
                            agent: pop.agent_id.clone(),
                            iface: (!shard.interface.is_empty()).then(|| shard.interface.clone()),
                            filter: (!shard.filter.is_empty()).then(|| shard.filter.clone()),
                            received: Some(pop.received),
                            dropped: Some(pop.kernel_dropped + pop.agent_dropped),
                            description,
                            ts_offset_ns: shift,
                        },
                    });
                }
            }
        }
    }
    agents
}

/// Why the merge from the bucket did not produce the object.
#[derive(Debug, thiserror::Error)]
pub(super) enum FromBucketError {
    /// The bucket failed (retryable or not).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An agent's shards do not share one file header: merge on scratch instead.
    #[error("the shards of {0} do not share one file header")]
    HeaderChanged(String),
    /// The merge itself failed (a damaged shard, a writer error).
    #[error("{0}")]
    Merge(String),
    /// Cancelled; whatever was started has been stopped and aborted.
    #[error("cancelled")]
    Cancelled,
}

/// What an agent's reader gets from its download task.
enum Chunk {
    Data(Bytes),
    End,
}

/// The first failure of any download, kept so the caller can say why (and whether to retry).
type Failure = Arc<Mutex<Option<FromBucketError>>>;

fn fail(failure: &Failure, error: FromBucketError) {
    edgecap_common::lock(failure).get_or_insert(error);
}

/// The merge's input for one agent: the chunks its download task sends, as one stream.
struct Incoming {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
}

impl Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(bytes)) => self.current = bytes,
                Some(Chunk::End) => self.ended = true,
                // The download stopped without reaching the end: its failure is recorded.
                None => return Err(std::io::Error::other("a shard download stopped before its end")),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Downloads one agent's shards in order into `tx`: the first whole, the others without
/// their file header, each no longer than recorded at commit.
async fn download(store: Arc<dyn ObjectStore>, agent: AgentShards, tx: mpsc::Sender<Chunk>, failure: Failure) {
    let mut first: Option<[u8; PCAP_HEADER]> = None;
    for shard in &agent.shards {
        let result = async {
            let (meta, reader) = store.get(&shard.key).await?;
            if meta.size != shard.file_bytes {
                return Err(size_differs(shard, meta.size).into());
            }
            if shard.file_bytes < PCAP_HEADER as u64 {
                let why = format!("shard {} has {} bytes: not even a pcap file header", shard.key, shard.file_bytes);
                return Err(StorageError::Rejected(why).into());
            }
            // No more than the size recorded at commit: an endless answer is refused.
            let mut reader = reader.take(shard.file_bytes + 1);
            let mut header = [0u8; PCAP_HEADER];
            // (Its size was checked: a short read here is the connection's fault, not the shard's.)
            reader.read_exact(&mut header).await.map_err(|e| unavailable(&shard.key, e))?;
            let mut got = PCAP_HEADER as u64;
            match first {
                None => {
                    first = Some(header);
                    if tx.send(Chunk::Data(Bytes::copy_from_slice(&header))).await.is_err() {
                        return Ok(false);
                    }
                }
                Some(h) if h == header => {}
                Some(_) => return Err(FromBucketError::HeaderChanged(agent.name.clone())),
            }
            loop {
                let mut buf = BytesMut::with_capacity(CHUNK);
                while buf.len() < CHUNK {
                    if reader.read_buf(&mut buf).await.map_err(|e| unavailable(&shard.key, e))? == 0 {
                        break;
                    }
                }
                if buf.is_empty() {
                    break;
                }
                got += buf.len() as u64;
                if got > shard.file_bytes {
                    break;
                }
                if tx.send(Chunk::Data(buf.freeze())).await.is_err() {
                    return Ok(false);
                }
            }
            if got != shard.file_bytes {
                return Err(size_differs(shard, got).into());
            }
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => {}
            // The merge stopped reading: nothing more to do.
            Ok(false) => return,
            Err(error) => {
                fail(&failure, error);
                return;
            }
        }
    }
    let _ = tx.send(Chunk::End).await;
}

/// The refusal of a shard whose size in the bucket is not the one committed (`held`: what
/// was found, or read up to the bound of one byte more). Both merge paths give it.
pub(super) fn size_differs(shard: &ShardRef, held: u64) -> StorageError {
    let held = if held > shard.file_bytes { format!("more than {}", shard.file_bytes) } else { held.to_string() };
    let why = format!("shard {} has {held} bytes in the bucket, {} were committed", shard.key, shard.file_bytes);
    StorageError::Rejected(why)
}

fn unavailable(key: &str, e: std::io::Error) -> FromBucketError {
    StorageError::Unavailable(format!("download {key}: {e}")).into()
}

/// The merged file as it is written, cut into parts for the upload. Fails once `cancelled`
/// is set or the upload has stopped.
struct Parts {
    tx: mpsc::Sender<Piece>,
    buf: BytesMut,
    cancelled: Arc<AtomicBool>,
}

impl Parts {
    fn send(&mut self, piece: Piece) -> std::io::Result<()> {
        self.tx.blocking_send(piece).map_err(|_| std::io::Error::other("the upload of the merged file stopped"))
    }

    fn finish(mut self) -> std::io::Result<()> {
        let rest = self.buf.split().freeze();
        self.send(Piece::Bytes(rest))?;
        self.send(Piece::End)
    }
}

impl std::io::Write for Parts {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("merge cancelled"));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PART_SIZE as usize {
            let part = self.buf.split().freeze();
            self.buf.reserve(PART_SIZE as usize);
            self.send(Piece::Bytes(part))?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The merged file's size, when it is known before the merge: classic pcap out of shards that
/// are all classic pcap, whose recorded sizes are one file header, then a 16-byte record
/// header and the captured bytes of each packet. The merge writes every record once, with
/// the same lengths, after one file header. `None` otherwise (pcapng, whose blocks depend on
/// the interfaces met).
pub(super) fn merged_size(agents: &[AgentShards], options: &MergeOptions) -> Option<u64> {
    if !matches!(options.format, None | Some(edgecap_merge::OutputFormat::Pcap)) {
        return None;
    }
    let mut size = PCAP_HEADER as u64;
    for shard in agents.iter().flat_map(|a| &a.shards) {
        let records = shard.packets.checked_mul(16)?.checked_add(shard.bytes)?;
        if shard.file_bytes.checked_sub(PCAP_HEADER as u64)? != records {
            return None;
        }
        size = size.checked_add(records)?;
    }
    Some(size)
}

/// Merges `agents` from `source` into `key` of `target`, in one streamed PUT when
/// [`merged_size`] knows the size. Should the merge come to another size (a shard's record
/// did not describe it), or the PUT fail in a way worth retrying (a stall in the inputs
/// outlasting the store's patience with an idle upload, which a multipart upload's whole
/// parts never meet), nothing is committed, and the merge runs again as a multipart upload.
pub(super) async fn merge(
    source: Arc<dyn ObjectStore>,
    target: Arc<dyn ObjectStore>,
    agents: Vec<AgentShards>,
    key: &str,
    options: MergeOptions,
    cancel: &CancellationToken,
) -> Result<MergeReport, FromBucketError> {
    if let Some(size) = merged_size(&agents, &options) {
        let sized =
            merge_once(source.clone(), target.clone(), agents.clone(), key, options.clone(), Some(size), cancel);
        match sized.await {
            Err(FromBucketError::Storage(e)) if e.is_retryable() || matches!(e, StorageError::SizeDiffers { .. }) => {
                tracing::warn!(key, size, error = %e, "the merged file did not go up as one PUT; merging again in parts");
            }
            other => return other,
        }
    }
    merge_once(source, target, agents, key, options, None, cancel).await
}

/// One merge into `key`: of `size` bytes exactly, or of a size known at the end. Downloads,
/// merge and upload run side by side; a cancel stops them all and aborts the upload before
/// this returns.
async fn merge_once(
    source: Arc<dyn ObjectStore>,
    target: Arc<dyn ObjectStore>,
    agents: Vec<AgentShards>,
    key: &str,
    options: MergeOptions,
    size: Option<u64>,
    cancel: &CancellationToken,
) -> Result<MergeReport, FromBucketError> {
    let failure: Failure = Arc::default();
    let mut downloads = tokio::task::JoinSet::new();
    let mut inputs = Vec::with_capacity(agents.len());
    for agent in agents {
        let (tx, rx) = mpsc::channel(PREFETCH);
        inputs.push(MergeInput {
            name: agent.name.clone(),
            reader: Incoming { rx, current: Bytes::new(), ended: false },
            provenance: Some(agent.provenance.clone()),
        });
        downloads.spawn(download(source.clone(), agent, tx, failure.clone()));
    }
    let (parts_tx, parts_rx) = mpsc::channel(PARTS_AHEAD);
    let cancelled = Arc::new(AtomicBool::new(false));
    let parts = Parts { tx: parts_tx, buf: BytesMut::with_capacity(PART_SIZE as usize), cancelled: cancelled.clone() };
    let mut work = tokio::task::spawn_blocking(move || -> std::io::Result<MergeReport> {
        let (parts, report) = edgecap_merge::merge(inputs, parts, &options).map_err(std::io::Error::other)?;
        parts.finish()?;
        Ok(report)
    });
    // The upload runs here; the merge thread and the downloads beside it.
    let upload_cancel = cancel.child_token();
    let upload = match size {
        Some(size) => target.put_stream_sized(key, size, parts_rx, &upload_cancel),
        None => target.put_stream(key, parts_rx, &upload_cancel),
    };
    tokio::pin!(upload);
    let mut uploaded = None;
    let merged = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                cancelled.store(true, Ordering::Relaxed);
                upload_cancel.cancel();
                downloads.abort_all();
                // The upload first: it lets go of the parts channel the merge may wait on.
                if uploaded.is_none() {
                    let _ = (&mut upload).await;
                }
                let _ = (&mut work).await;
                return Err(FromBucketError::Cancelled);
            }
            done = &mut upload, if uploaded.is_none() => {
                if done.is_err() {
                    // Nothing more can go up: stop the merge at its next write.
                    cancelled.store(true, Ordering::Relaxed);
                    downloads.abort_all();
                }
                uploaded = Some(done);
            }
            merged = &mut work => break merged,
        }
    };
    let merged = merged.map_err(|e| FromBucketError::Merge(format!("merge thread: {e}")))?;
    if merged.is_err() {
        upload_cancel.cancel();
    }
    // The merge has let go of its inputs, so the downloads end by themselves (a failure is
    // recorded first): give them a moment before cutting them off.
    let settle = async { while downloads.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(5), settle).await.is_err() {
        downloads.abort_all();
    }
    let uploaded = match uploaded {
        Some(u) => u,
        None => upload.await,
    };
    // The first cause: a download's, then the upload's (unless this side stopped it), then
    // the merge's own.
    if let Some(error) = edgecap_common::lock(&failure).take() {
        return Err(error);
    }
    if cancel.is_cancelled() {
        return Err(FromBucketError::Cancelled);
    }
    match (merged, uploaded) {
        (Ok(report), Ok(_)) => Ok(report),
        // The upload's own failure (not its writer going away) is the cause.
        (_, Err(e)) if !matches!(e, StorageError::Cancelled | StorageError::Unfinished(_)) => Err(e.into()),
        (Err(e), _) => Err(FromBucketError::Merge(e.to_string())),
        (Ok(_), Err(e)) => Err(e.into()),
    }
}
