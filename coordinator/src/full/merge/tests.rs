//! The leader's merge on a local directory standing in for the bucket: bounds, and the
//! merge from the bucket against the merge through scratch.

use std::sync::Arc;

use bytes::Bytes;
use edgecap_storage::ObjectStore;

use super::*;
use crate::agents::Registry;
use crate::model::{PopResult, PopStatus, ShardRef};
use crate::store::Repo;

/// A full capture's record with these PoPs.
fn full_record(pops: Vec<PopResult>) -> CaptureRecord {
    let request = crate::model::CaptureRequest::for_test(crate::model::CaptureType::Full);
    let record = CaptureRecord::from_request("acct", request, time::OffsetDateTime::now_utc());
    CaptureRecord { pops, ..record }
}

/// A shard's record, its timestamps and the rest left at 1 and empty.
fn shard_ref(key: &str, packets: u64, bytes: u64, file_bytes: u64) -> ShardRef {
    ShardRef {
        key: key.into(),
        packets,
        bytes,
        file_bytes,
        first_ts_ns: 1,
        last_ts_ns: 1,
        sha256: String::new(),
        crc32c: String::new(),
        interface: String::new(),
        filter: String::new(),
    }
}

/// A full capture of one PoP with one shard.
fn one_shard_record(shard: ShardRef) -> CaptureRecord {
    let mut pop = PopResult::new("p", "a", PopStatus::Done);
    pop.shards = vec![shard];
    full_record(vec![pop])
}

/// A local directory standing in for the bucket.
async fn bucket(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    edgecap_storage::open(&edgecap_storage::StorageConfig::LocalDir { root: dir.join("bucket") }).await.unwrap()
}

/// The full-capture side of a leader with scratch under `dir`.
fn leader(repo: &Repo, dir: &std::path::Path, merge_streams: usize) -> FullCaptures {
    FullCaptures::new(
        repo.clone(),
        Arc::new(Registry::default()),
        "t".into(),
        crate::config::FullSettings { merge_streams, ..Default::default() },
        Default::default(),
        dir.join("tmp"),
        Default::default(),
    )
}

#[tokio::test]
async fn a_shard_larger_in_the_bucket_than_committed_is_not_downloaded_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = bucket(dir.path()).await;
    // What the bucket now holds is 1 MiB; the agent committed 100 bytes.
    store.put("edgecap-shards/c1/p/a/shard-000001.pcap", Bytes::from(vec![0u8; 1 << 20])).await.unwrap();
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    // Straight from the bucket (the default), and through scratch.
    for merge_streams in [256, 0] {
        let full = leader(&repo, dir.path(), merge_streams);
        let record = one_shard_record(shard_ref("edgecap-shards/c1/p/a/shard-000001.pcap", 1, 60, 100));
        let outcome = full.merge_into_bucket(&store, &record, &CancellationToken::new()).await;
        let error = outcome.unwrap_err().to_string();
        assert!(error.contains("more than 100 bytes") && error.contains("100 were committed"), "{error}");
        // The scratch directory is gone, and nothing was read past the bound.
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).map(|d| d.count()).unwrap_or(0), 0);
        // No merged object was committed.
        assert!(store.head(&record.merged_key()).await.unwrap().is_none());
    }
}

/// A shard of `n` packets of 1000 bytes, `start_ms + 7 * i` ms, stored under `key`.
async fn put_shard(store: &Arc<dyn ObjectStore>, key: &str, linktype: u16, start_ms: u64, n: u64) -> ShardRef {
    let mut w = edgecap_merge::write::PcapWriter::new(Vec::new(), linktype, 65535, true).unwrap();
    for i in 0..n {
        let mut data = vec![(i % 251) as u8; 1000];
        data[..8].copy_from_slice(&(start_ms + 7 * i).to_be_bytes());
        w.packet((start_ms + 7 * i) * 1_000_000, 1000, &data).unwrap();
    }
    let bytes = w.finish().unwrap();
    let file_bytes = bytes.len() as u64;
    store.put(key, Bytes::from(bytes)).await.unwrap();
    ShardRef {
        first_ts_ns: start_ms * 1_000_000,
        last_ts_ns: (start_ms + 7 * (n - 1)) * 1_000_000,
        interface: "eth0".into(),
        ..shard_ref(key, n, n * 1000, file_bytes)
    }
}

/// `agents` PoPs of `shards` shards each, stored; `shape(agent, shard)` gives a shard's link
/// type, first millisecond and packets.
async fn put_pops(
    store: &Arc<dyn ObjectStore>,
    agents: u64,
    shards: u64,
    shape: impl Fn(u64, u64) -> (u16, u64, u64),
) -> Vec<PopResult> {
    let mut pops = Vec::new();
    for a in 0..agents {
        let mut pop = PopResult::new(&format!("p{a}"), &format!("a{a}"), PopStatus::Done);
        for s in 0..shards {
            let (linktype, start_ms, n) = shape(a, s);
            let key = format!("edgecap-shards/c1/p{a}/a{a}/shard-{s:06}.pcap");
            pop.shards.push(put_shard(store, &key, linktype, start_ms, n).await);
        }
        pops.push(pop);
    }
    pops
}

/// The object under `key`, whole.
async fn stored(store: &Arc<dyn ObjectStore>, key: String) -> Vec<u8> {
    let (_, mut reader) = store.get(&key).await.unwrap();
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut out).await.unwrap();
    out
}

#[tokio::test]
async fn the_merge_from_the_bucket_writes_what_the_merge_through_scratch_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = bucket(dir.path()).await;
    // 3 agents x 2 shards of 3000 packets, interleaved in time: about 12 MiB merged, so
    // the upload goes in several parts. The third agent's second shard has another link
    // type: it cannot be read as one stream with its first.
    let pops = put_pops(&store, 3, 2, |a, s| (if a == 2 && s == 1 { 101 } else { 1 }, 30_000 * s + a, 3000)).await;
    let record = full_record(Vec::new());
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    let full = |merge_streams| leader(&repo, dir.path(), merge_streams);
    let merged = |record: &CaptureRecord| stored(&store, record.merged_key());
    let same_agents = CaptureRecord { pops: pops[..2].to_vec(), ..record.clone() };
    let streamed = full(256).merge_into_bucket(&store, &same_agents, &CancellationToken::new()).await.unwrap();
    assert_eq!(streamed, Some(4 * 3000));
    let from_bucket = merged(&same_agents).await;
    assert!(from_bucket.len() > edgecap_storage::s3::PART_SIZE as usize, "{} bytes", from_bucket.len());
    full(0).merge_into_bucket(&store, &same_agents, &CancellationToken::new()).await.unwrap();
    assert!(from_bucket == merged(&same_agents).await, "the same file either way");
    // With the shard of another link type (pcapng: an interface each): through scratch,
    // every packet still there.
    let all = CaptureRecord { pops, output_format: OutputFormat::Pcapng, ..record };
    let streamed = full(256).merge_into_bucket(&store, &all, &CancellationToken::new()).await.unwrap();
    assert_eq!(streamed, Some(6 * 3000));
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).map(|d| d.count()).unwrap_or(0), 0);
}

#[tokio::test]
async fn a_cancelled_merge_returns_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = bucket(dir.path()).await;
    let record = full_record(put_pops(&store, 2, 1, |a, _| (1, a, 20_000)).await);
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    for merge_streams in [256, 0] {
        let full = leader(&repo, dir.path(), merge_streams);
        let cancel = CancellationToken::new();
        let merging = full.merge_into_bucket(&store, &record, &cancel);
        tokio::pin!(merging);
        // Cancelled while it runs (a writer that kept retrying would never come back).
        let outcome = tokio::select! {
            outcome = &mut merging => outcome,
            _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {
                cancel.cancel();
                tokio::time::timeout(std::time::Duration::from_secs(20), merging).await.expect("the merge returns")
            }
        };
        match outcome {
            Err(MergeError::Cancelled) => assert!(store.head(&record.merged_key()).await.unwrap().is_none()),
            // (Done before the cancel on a fast machine: then whole.)
            other => assert_eq!(other.unwrap(), Some(40_000)),
        }
    }
}

#[tokio::test]
async fn a_shard_shorter_than_a_file_header_is_refused_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = bucket(dir.path()).await;
    store.put("edgecap-shards/c1/p/a/shard-000001.pcap", Bytes::from_static(b"short")).await.unwrap();
    let mut shard = put_shard(&store, "edgecap-shards/c1/p/a/shard-000002.pcap", 1, 0, 1).await;
    shard.key = "edgecap-shards/c1/p/a/shard-000001.pcap".into();
    shard.file_bytes = 5;
    let record = one_shard_record(shard);
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    let started = std::time::Instant::now();
    let error = leader(&repo, dir.path(), 256).merge_into_bucket(&store, &record, &CancellationToken::new()).await;
    let error = error.unwrap_err().to_string();
    assert!(error.contains("not even a pcap file header"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "refused, not retried for merge_retry");
}

#[tokio::test]
async fn the_merged_size_is_known_beforehand_for_classic_pcap_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = bucket(dir.path()).await;
    let record = full_record(put_pops(&store, 2, 2, |a, s| (1, 10_000 * s + a, 100 + a)).await);
    let agents = from_bucket::by_agent(&record);
    let size = from_bucket::merged_size(&agents, &merge_options(&record)).expect("classic pcap");
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    let merged = leader(&repo, dir.path(), 256).merge_into_bucket(&store, &record, &CancellationToken::new()).await;
    assert_eq!(merged.unwrap(), Some(2 * 100 + 2 * 101));
    assert_eq!(store.head(&record.merged_key()).await.unwrap().unwrap().size, size);
    let pcapng = CaptureRecord { output_format: OutputFormat::Pcapng, ..record.clone() };
    assert_eq!(from_bucket::merged_size(&agents, &merge_options(&pcapng)), None);
    // A shard whose numbers do not add up to a classic pcap file of its size.
    let mut odd = agents.clone();
    odd[1].shards[0].bytes += 1;
    assert_eq!(from_bucket::merged_size(&odd, &merge_options(&record)), None);
}

#[tokio::test]
async fn a_merge_that_comes_to_another_size_than_announced_is_merged_again_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let store = bucket(dir.path()).await;
    // A pcapng shard whose record reads as classic pcap of its size: the size announced is
    // wrong, the merge finds out at the end.
    let mut w = edgecap_merge::write::PcapNgWriter::new(Vec::new(), None).unwrap();
    let iface = w.add_interface(edgecap_merge::write::OutInterface { linktype: 1, ..Default::default() }).unwrap();
    for i in 0..50u64 {
        w.packet(iface, (1 + i) * 1_000_000, 300, &[i as u8; 300]).unwrap();
    }
    let bytes = w.finish().unwrap();
    let key = "edgecap-shards/c1/p/a/shard-000000.pcapng";
    store.put(key, Bytes::from(bytes.clone())).await.unwrap();
    let file_bytes = bytes.len() as u64;
    let record = one_shard_record(shard_ref(key, 50, file_bytes - 24 - 16 * 50, file_bytes));
    let agents = from_bucket::by_agent(&record);
    assert_eq!(from_bucket::merged_size(&agents, &merge_options(&record)), Some(file_bytes));
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    let merged = leader(&repo, dir.path(), 256).merge_into_bucket(&store, &record, &CancellationToken::new()).await;
    assert_eq!(merged.unwrap(), Some(50));
    // Whole, and what the merge through scratch writes.
    assert_eq!(store.head(&record.merged_key()).await.unwrap().unwrap().size, 24 + 50 * (16 + 300));
    let streamed = stored(&store, record.merged_key()).await;
    leader(&repo, dir.path(), 0).merge_into_bucket(&store, &record, &CancellationToken::new()).await.unwrap();
    assert!(streamed == stored(&store, record.merged_key()).await);
}

/// A bucket whose one-request uploads fail as a store does with an idle upload it gave up
/// on; everything else goes to `inner`.
#[derive(Debug)]
struct NoSinglePut {
    inner: Arc<dyn ObjectStore>,
}

#[async_trait::async_trait]
impl ObjectStore for NoSinglePut {
    async fn put(&self, key: &str, body: Bytes) -> edgecap_storage::Result<()> {
        self.inner.put(key, body).await
    }
    async fn put_file(&self, key: &str, path: &std::path::Path, c: &CancellationToken) -> edgecap_storage::Result<u64> {
        self.inner.put_file(key, path, c).await
    }
    async fn put_stream(
        &self,
        key: &str,
        pieces: tokio::sync::mpsc::Receiver<edgecap_storage::Piece>,
        c: &CancellationToken,
    ) -> edgecap_storage::Result<u64> {
        self.inner.put_stream(key, pieces, c).await
    }
    async fn put_stream_sized(
        &self,
        key: &str,
        _: u64,
        _: tokio::sync::mpsc::Receiver<edgecap_storage::Piece>,
        _: &CancellationToken,
    ) -> edgecap_storage::Result<u64> {
        Err(StorageError::Unavailable(format!("put {key}: HTTP 400 RequestTimeout")))
    }
    async fn get(
        &self,
        key: &str,
    ) -> edgecap_storage::Result<(edgecap_storage::ObjectMeta, edgecap_storage::ObjectReader)> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> edgecap_storage::Result<Option<edgecap_storage::ObjectMeta>> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> edgecap_storage::Result<Vec<edgecap_storage::ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> edgecap_storage::Result<()> {
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> edgecap_storage::Result<()> {
        self.inner.delete_many(keys).await
    }
}

#[tokio::test]
async fn a_single_put_that_fails_is_followed_by_a_merge_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let inner = bucket(dir.path()).await;
    let record = full_record(put_pops(&inner, 2, 1, |a, _| (1, a, 500)).await);
    let store: Arc<dyn ObjectStore> = Arc::new(NoSinglePut { inner: inner.clone() });
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    // At once: not after the retries of an unavailable bucket (up to `merge_retry`).
    let full = leader(&repo, dir.path(), 256);
    let cancel = CancellationToken::new();
    let merging = full.merge_into_bucket(&store, &record, &cancel);
    let merged = tokio::time::timeout(std::time::Duration::from_secs(10), merging).await.expect("merged at once");
    assert_eq!(merged.unwrap(), Some(1000));
    let size = from_bucket::merged_size(&from_bucket::by_agent(&record), &merge_options(&record)).unwrap();
    assert_eq!(inner.head(&record.merged_key()).await.unwrap().unwrap().size, size);
}
