//! Tests of `follow.rs`.

use std::sync::Arc;

use super::*;
use crate::model::{CaptureRequest, CaptureType};
use crate::store::Repo;

fn record(pops: usize) -> CaptureRecord {
    let request = CaptureRequest { colo_name: Some("ord".into()), ..CaptureRequest::for_test(CaptureType::Full) };
    let mut record = CaptureRecord::from_request("acct", request, time::OffsetDateTime::now_utc());
    record.pops = (0..pops)
        .map(|i| PopResult {
            error: Some("x".repeat(100)),
            ..PopResult::new(&format!("ord{i:03}"), &format!("agent-{i:03}"), PopStatus::Running)
        })
        .collect();
    record
}

#[tokio::test]
async fn a_status_the_store_will_never_take_ends_the_capture_as_failed() {
    // A store that takes 8 KiB per value, like etcd's 1.5 MiB for a big fleet.
    let store: Arc<dyn edgecap_state::StateStore> =
        Arc::new(edgecap_state::embedded::EmbeddedStore::in_memory_with_limit(8 << 10));
    let repo = Repo::new(store);
    let small = record(2);
    repo.create_capture(&small).await.unwrap();
    let full = FullCaptures::for_test(repo.clone(), Default::default());
    let mut big = CaptureRecord { status: CaptureStatus::Running, ..record(200) };
    big.id = small.id.clone();
    assert!(full.persist(&mut big).await, "a final answer, not a retry forever");
    assert_eq!(big.status, CaptureStatus::Failed);
    let stored = repo.get_capture("acct", &small.id).await.unwrap().unwrap();
    assert_eq!(stored.status, CaptureStatus::Failed);
    assert!(stored.pops.is_empty());
    let message = stored.error_message.unwrap();
    assert!(message.contains("larger than the state store takes") && message.contains("ends here"), "{message}");
    // A success stays a success (the merged file is in the bucket), without its details.
    let mut done = CaptureRecord { status: CaptureStatus::Success, packets_captured: Some(7), ..record(200) };
    done.id = small.id.clone();
    assert!(full.persist(&mut done).await);
    let stored = repo.get_capture("acct", &small.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.packets_captured), (CaptureStatus::Success, Some(7)));
    assert!(stored.error_message.unwrap().contains("details are not kept"));
}

/// A PoP that never reported and whose job was never written (the replica that accepted the
/// capture died while writing the jobs) is failed once no start can reach its agent any
/// more; a PoP with a job that has not reported yet is left to its deadline.
#[tokio::test(start_paused = true)]
async fn a_pop_whose_job_was_never_written_is_failed_after_the_start_deadline() {
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    let settings = crate::config::FullSettings {
        reconnect_grace: Duration::from_secs(3600),
        upload_grace: Duration::from_secs(3600),
        ..Default::default()
    };
    let full = Arc::new(FullCaptures::for_test(repo.clone(), settings));
    let mut capture = record(0);
    capture.pops =
        vec![PopResult::new("ord01", "a", PopStatus::Pending), PopResult::new("ord02", "b", PopStatus::Pending)];
    repo.create_capture(&capture).await.unwrap();
    // Only a's job was written.
    full.submit(&CaptureRecord { pops: capture.pops[..1].to_vec(), ..capture.clone() }).await.unwrap();
    let cancel = CancellationToken::new();
    let runner = tokio::spawn(full.clone().follow(capture.clone(), cancel.clone()));
    tokio::time::sleep(JOBS_CHECKED_AFTER - Duration::from_secs(1)).await;
    assert!(repo.get_pop(&capture.id, "b").await.unwrap().is_none(), "not before the start deadline and its margin");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = repo.get_pop(&capture.id, "b").await.unwrap().expect("b failed").0;
    assert_eq!(b.status, PopStatus::Failed);
    assert!(b.error.as_deref().unwrap_or_default().contains("never written"), "{b:?}");
    assert!(repo.get_pop(&capture.id, "a").await.unwrap().is_none(), "a has its job: left to its deadline");
    cancel.cancel();
    runner.await.unwrap();
}
