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
        let record = full_record(vec![pop]);
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
        key: key.into(),
        packets: n,
        bytes: n * 1000,
        file_bytes,
        first_ts_ns: start_ms * 1_000_000,
        last_ts_ns: (start_ms + 7 * (n - 1)) * 1_000_000,
        sha256: String::new(),
        crc32c: String::new(),
        interface: "eth0".into(),
        filter: String::new(),
    }
}

#[tokio::test]
async fn the_merge_from_the_bucket_writes_what_the_merge_through_scratch_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = bucket(dir.path()).await;
    // 3 agents x 2 shards of 3000 packets, interleaved in time: about 12 MiB merged, so
    // the upload goes in several parts. The third agent's second shard has another link
    // type: it cannot be read as one stream with its first.
    let mut pops = Vec::new();
    for a in 0..3u64 {
        let mut pop = PopResult::new(&format!("p{a}"), &format!("a{a}"), PopStatus::Done);
        for s in 0..2u64 {
            let linktype = if a == 2 && s == 1 { 101 } else { 1 };
            let key = format!("edgecap-shards/c1/p{a}/a{a}/shard-{s:06}.pcap");
            pop.shards.push(put_shard(&store, &key, linktype, 30_000 * s + a, 3000).await);
        }
        pops.push(pop);
    }
    let record = full_record(Vec::new());
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    let full = |merge_streams| leader(&repo, dir.path(), merge_streams);
    let merged = |record: &CaptureRecord| {
        let store = store.clone();
        let key = record.merged_key();
        async move {
            let (_, mut reader) = store.get(&key).await.unwrap();
            let mut out = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut out).await.unwrap();
            out
        }
    };
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
    let mut pops = Vec::new();
    for a in 0..2u64 {
        let mut pop = PopResult::new(&format!("p{a}"), &format!("a{a}"), PopStatus::Done);
        let key = format!("edgecap-shards/c1/p{a}/a{a}/shard-000000.pcap");
        pop.shards.push(put_shard(&store, &key, 1, a, 20_000).await);
        pops.push(pop);
    }
    let record = full_record(pops);
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
    let mut pop = PopResult::new("p", "a", PopStatus::Done);
    pop.shards = vec![shard];
    let record = full_record(vec![pop]);
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    let started = std::time::Instant::now();
    let error = leader(&repo, dir.path(), 256).merge_into_bucket(&store, &record, &CancellationToken::new()).await;
    let error = error.unwrap_err().to_string();
    assert!(error.contains("not even a pcap file header"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "refused, not retried for merge_retry");
}
