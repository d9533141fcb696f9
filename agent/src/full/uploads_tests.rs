//! Tests of the upload loop (`uploads.rs`) on a real spool directory.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgecap_common::lock;
use tokio_util::sync::CancellationToken;

use super::super::{FullCaptureConfig, Job, Jobs};
use super::SCAN_GAP;

/// Shards closing faster than scans: the loop scans at most once per [`SCAN_GAP`] (one
/// blocking thread had scanned without a pause), and still scans again after each gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_closing_a_thousand_a_second_bring_a_scan_per_gap_at_most() {
    let spool = tempfile::tempdir().unwrap();
    let sources = edgecap_capture::source::factory(&edgecap_capture::source::SourceConfig::Libpcap);
    let config = FullCaptureConfig::new(spool.path().to_path_buf());
    let jobs = Arc::new(Jobs::open(config, "a1", "pop1", None, sources).unwrap());
    // A capture whose directory every scan reads (nothing in it to upload yet).
    let id = "0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(spool.path().join(id)).unwrap();
    lock(&jobs.jobs).insert(id.into(), Job::reserved(spool.path().join(id)));
    let (out, _coordinator) = tokio::sync::mpsc::channel(8);
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let uploads = tokio::spawn(jobs.clone().upload_loop(out, cancel.clone()));
    for _ in 0..500 {
        jobs.shard_closed.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let scans = jobs.spool_scans.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    cancel.cancel();
    uploads.await.unwrap();
    // The first scan at once, each next one a gap after the one before: however slow the
    // machine, never more than this.
    let most = elapsed.as_millis() / SCAN_GAP.as_millis() + 1;
    assert!(scans >= 2 && u128::from(scans) <= most, "{scans} scans in {elapsed:?} (at most {most})");
    assert_eq!(jobs.gauges().spool_scans, scans, "what the metrics show");
}
