//! Tests of `progress.rs` over an in-memory store.

use super::*;
use crate::store::interloper::Interloper;

fn report(capture: &str, state: pb::CaptureState, written: u64) -> pb::CaptureReport {
    pb::CaptureReport {
        capture_id: capture.into(),
        capture_state: state as i32,
        counters: Some(pb::CaptureCounters { written, ..Default::default() }),
        ..Default::default()
    }
}

async fn repo_with_pops(agents: &[&str]) -> Repo {
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    for agent in agents {
        repo.cas_pop("c1", agent, None, &PopResult::new("ord", agent, PopStatus::Pending)).await.unwrap();
    }
    repo
}

async fn pop(repo: &Repo, agent: &str) -> PopResult {
    repo.get_pop("c1", agent).await.unwrap().unwrap().0
}

#[tokio::test]
async fn states_are_written_at_once_and_counters_alone_at_most_every_interval() {
    let repo = repo_with_pops(&["a", "b"]).await;
    let progress = Progress::default();
    progress.push("a", report("c1", pb::CaptureState::Running, 1));
    progress.push("b", report("c1", pb::CaptureState::Running, 2));
    // Not a PoP of the capture: dropped, no key made.
    progress.push("x", report("c1", pb::CaptureState::Running, 3));
    progress.flush(&repo, false).await;
    assert_eq!((pop(&repo, "a").await.status, pop(&repo, "a").await.packets), (PopStatus::Running, 1));
    assert_eq!(pop(&repo, "b").await.packets, 2);
    assert!(repo.get_pop("c1", "x").await.unwrap().is_none());
    assert!(lock(&progress.state).queued.is_empty());

    // New counters only: they wait for their interval (or a flush of everything).
    progress.push("a", report("c1", pb::CaptureState::Running, 10));
    progress.push("a", report("c1", pb::CaptureState::Running, 11));
    progress.flush(&repo, false).await;
    assert_eq!(pop(&repo, "a").await.packets, 1, "counters alone are not written yet");
    assert_eq!(
        lock(&progress.state).queued[&("c1".into(), "a".into())].len(),
        1,
        "the newer report replaced the older"
    );
    progress.flush(&repo, true).await;
    assert_eq!(pop(&repo, "a").await.packets, 11);

    // An end with an error is urgent.
    let mut end = report("c1", pb::CaptureState::Failed, 5);
    end.error = "disk gone".into();
    progress.push("b", end);
    progress.flush(&repo, false).await;
    let b = pop(&repo, "b").await;
    assert_eq!((b.status, b.error.as_deref(), b.packets), (PopStatus::Failed, Some("disk gone"), 5));
    // A final state is never left.
    progress.push("b", report("c1", pb::CaptureState::Running, 6));
    progress.flush(&repo, true).await;
    assert_eq!(pop(&repo, "b").await.status, PopStatus::Failed);
}

#[tokio::test]
async fn a_stale_batch_writes_nothing_and_reports_fold_onto_what_others_wrote() {
    let repo = repo_with_pops(&["a", "b"]).await;
    let progress = Progress::default();
    progress.push("a", report("c1", pb::CaptureState::Running, 1));
    progress.push("b", report("c1", pb::CaptureState::Running, 1));
    progress.flush(&repo, true).await;
    // Read for the batch, then written by someone else before the transaction: simulated
    // by writing between the queueing and the flush with a revision the batch cannot know.
    progress.push("a", report("c1", pb::CaptureState::Uploading, 7));
    progress.push("b", report("c1", pb::CaptureState::Uploading, 8));
    let current = repo.pops_with_revisions("c1").await.unwrap();
    repo.update_pop("c1", "a", None, |p| p.error = Some("noted by the leader".into())).await.unwrap();
    let stale: Vec<(Option<Revision>, PopResult)> =
        ["a", "b"].iter().map(|a| (Some(current[*a].1), PopResult { packets: 99, ..current[*a].0.clone() })).collect();
    assert!(!repo.cas_pops("c1", &stale).await.unwrap(), "a changed since it was read: nothing written");
    assert_eq!(pop(&repo, "b").await.packets, 1);
    progress.flush(&repo, false).await;
    let a = pop(&repo, "a").await;
    assert_eq!((a.status, a.packets, a.error.as_deref()), (PopStatus::Uploading, 7, Some("noted by the leader")));
    assert_eq!(pop(&repo, "b").await.status, PopStatus::Uploading);
}

/// A report queued on a replica the agent has since left may be written after newer ones
/// from another replica: it lowers neither the status nor the counters.
#[tokio::test]
async fn a_stale_report_lowers_neither_status_nor_counters() {
    let repo = repo_with_pops(&["a"]).await;
    let (here, left) = (Progress::default(), Progress::default());
    let mut uploading = report("c1", pb::CaptureState::Uploading, 50);
    uploading.stop_reason_code = pb::StopReason::TimeLimit as i32;
    here.push("a", uploading);
    here.flush(&repo, false).await;
    left.push("a", report("c1", pb::CaptureState::Running, 20));
    left.flush(&repo, true).await;
    let a = pop(&repo, "a").await;
    assert_eq!((a.status, a.packets), (PopStatus::Uploading, 50));
}

#[tokio::test]
async fn repeats_are_not_urgent_and_a_long_error_is_cut() {
    let repo = repo_with_pops(&["a", "b"]).await;
    let progress = Progress::default();
    let key = |agent: &str| ("c1".to_string(), agent.to_string());
    let mut uploading = report("c1", pb::CaptureState::Uploading, 5);
    uploading.stop_reason_code = pb::StopReason::TimeLimit as i32;
    progress.push("a", uploading.clone());
    assert!(lock(&progress.state).urgent(&key("a")), "a new status");
    progress.flush(&repo, false).await;
    progress.push("a", uploading);
    assert!(!lock(&progress.state).urgent(&key("a")), "the same status and stop reason again");
    let mut done = report("c1", pb::CaptureState::Done, 5);
    done.stop_reason_code = pb::StopReason::TimeLimit as i32;
    progress.push("a", done.clone());
    progress.flush(&repo, false).await;
    assert_eq!(pop(&repo, "a").await.status, PopStatus::Done);
    progress.push("a", done);
    assert!(!lock(&progress.state).urgent(&key("a")), "a final state repeated");
    assert!(!lock(&progress.state).queued.contains_key(&key("a")), "and dropped: nothing to read it for");

    let mut failed = report("c1", pb::CaptureState::Failed, 1);
    failed.error = "é".repeat(10_000);
    progress.push("b", failed);
    progress.flush(&repo, false).await;
    let error = pop(&repo, "b").await.error.unwrap();
    assert!(error.len() <= MAX_ERROR_BYTES + 8 && error.ends_with(" [cut]"), "{} bytes", error.len());
}

/// A PoP's `started_at` is its agent's first word on when the capture began running; later
/// reports (another value, or none from an older agent) leave it.
#[tokio::test]
async fn a_pops_start_time_is_taken_from_its_first_report_that_has_one() {
    let repo = repo_with_pops(&["a", "b"]).await;
    let progress = Progress::default();
    let mut started = report("c1", pb::CaptureState::Running, 1);
    started.started_unix_ns = 1_764_650_000_123_456_789;
    progress.push("a", started.clone());
    progress.push("b", report("c1", pb::CaptureState::Running, 1));
    progress.flush(&repo, true).await;
    assert_eq!(pop(&repo, "a").await.started_at.as_deref(), Some("2025-12-02T04:33:20.123456Z"));
    assert_eq!(pop(&repo, "b").await.started_at, None, "an agent that does not say: none");
    started.started_unix_ns += 5_000_000_000;
    started.counters = Some(pb::CaptureCounters { written: 2, ..Default::default() });
    progress.push("a", started);
    let mut older = report("c1", pb::CaptureState::Uploading, 3);
    older.started_unix_ns = 0;
    progress.flush(&repo, true).await;
    progress.push("a", older);
    progress.flush(&repo, true).await;
    let a = pop(&repo, "a").await;
    assert_eq!((a.status, a.packets), (PopStatus::Uploading, 3));
    assert_eq!(a.started_at.as_deref(), Some("2025-12-02T04:33:20.123456Z"));
}

#[tokio::test]
async fn the_flusher_writes_a_first_report_without_waiting_for_its_round() {
    let repo = repo_with_pops(&["a"]).await;
    let progress = std::sync::Arc::new(Progress::default());
    let cancel = CancellationToken::new();
    let runner = tokio::spawn({
        let (progress, repo, cancel) = (progress.clone(), repo.clone(), cancel.clone());
        async move { progress.run(repo, cancel).await }
    });
    progress.push("a", report("c1", pb::CaptureState::Running, 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pop(&repo, "a").await.status != PopStatus::Running {
        assert!(Instant::now() < deadline, "never written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // What is queued when it ends is written on the way out.
    progress.push("a", report("c1", pb::CaptureState::Running, 42));
    cancel.cancel();
    runner.await.unwrap();
    assert_eq!(pop(&repo, "a").await.packets, 42);
}

impl Interloper {
    /// Makes the next batch find `agent`'s PoP of c1 written by the leader (an error noted)
    /// since the batch read it.
    async fn leader_notes_before_next_batch(&self, repo: &Repo, agent: &str) {
        let mut noted = pop(repo, agent).await;
        noted.error = Some("noted by the leader".into());
        // The PoP's key, as the store names it.
        let all = repo.store().list("").await.unwrap();
        let key = all.iter().find(|kv| kv.key.ends_with(&format!("/c1/{agent}"))).expect("the PoP's key").key.clone();
        *lock(&self.write_first) = Some((key, serde_json::to_vec(&noted).unwrap()));
    }
}

/// The batch's transaction loses a race (the leader wrote a PoP between the batch's read and
/// its transaction): each PoP is folded in on its own onto what is there now; then the store
/// fails a batch, and its reports are written at the next round.
#[tokio::test]
async fn a_batch_that_loses_a_race_or_fails_is_written_after_all() {
    let plain = repo_with_pops(&["a", "b"]).await;
    let interloper = Interloper::over(&plain);
    let repo = Repo::new(interloper.clone());
    let progress = Progress::default();
    progress.push("a", report("c1", pb::CaptureState::Running, 1));
    progress.push("b", report("c1", pb::CaptureState::Running, 1));
    progress.flush(&repo, true).await;

    interloper.leader_notes_before_next_batch(&repo, "a").await;
    progress.push("a", report("c1", pb::CaptureState::Uploading, 7));
    progress.push("b", report("c1", pb::CaptureState::Uploading, 8));
    progress.flush(&repo, false).await;
    assert!(lock(&interloper.write_first).is_none(), "the other writer came first");
    let a = pop(&repo, "a").await;
    assert_eq!((a.status, a.packets, a.error.as_deref()), (PopStatus::Uploading, 7, Some("noted by the leader")));
    assert_eq!((pop(&repo, "b").await.status, pop(&repo, "b").await.packets), (PopStatus::Uploading, 8));

    // The store fails the next batch: the reports stay queued and are written next time.
    interloper.fail_next.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut done = report("c1", pb::CaptureState::Done, 9);
    done.stop_reason_code = pb::StopReason::TimeLimit as i32;
    progress.push("b", done);
    progress.flush(&repo, false).await;
    assert_eq!(pop(&repo, "b").await.status, PopStatus::Uploading, "not written while the store fails");
    assert!(lock(&progress.state).urgent(&("c1".to_string(), "b".to_string())), "still queued, still urgent");
    progress.flush(&repo, false).await;
    assert_eq!((pop(&repo, "b").await.status, pop(&repo, "b").await.packets), (PopStatus::Done, 9));
}

/// A final state that could not be written (its batch lost a race, then every try of its
/// own too) is not remembered as written: the agent's repeat of it is queued, not dropped
/// as the repeat of a final state the store holds.
#[tokio::test]
async fn a_final_state_not_written_is_not_taken_for_one() {
    let plain = repo_with_pops(&["a"]).await;
    let interloper = Interloper::over(&plain);
    let repo = Repo::new(interloper.clone());
    let progress = Progress::default();
    progress.push("a", report("c1", pb::CaptureState::Running, 1));
    progress.flush(&repo, true).await;

    interloper.leader_notes_before_next_batch(&repo, "a").await;
    interloper.lose_single.store(5, std::sync::atomic::Ordering::SeqCst);
    let done = report("c1", pb::CaptureState::Done, 9);
    progress.push("a", done.clone());
    progress.flush(&repo, false).await;
    assert_eq!(pop(&repo, "a").await.status, PopStatus::Running, "every try lost");
    progress.push("a", done);
    assert!(lock(&progress.state).queued.contains_key(&("c1".to_string(), "a".to_string())), "the repeat is kept");
    progress.flush(&repo, true).await;
    assert_eq!(pop(&repo, "a").await.status, PopStatus::Done);
}

#[tokio::test]
async fn many_pops_are_written_in_one_round_over_several_transactions() {
    let agents: Vec<String> = (0..200).map(|i| format!("a{i:03}")).collect();
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    let repo = repo_with_pops(&names).await;
    let progress = Progress::default();
    for (i, agent) in names.iter().enumerate() {
        progress.push(agent, report("c1", pb::CaptureState::Running, i as u64));
    }
    // 200 PoPs: two transactions of 100 (`store::txn_chunks`), written together.
    progress.flush(&repo, false).await;
    for (i, agent) in names.iter().enumerate() {
        let p = pop(&repo, agent).await;
        assert_eq!((p.status, p.packets), (PopStatus::Running, i as u64), "{agent}");
    }
    assert!(lock(&progress.state).queued.is_empty());
}

/// A PoP has no key until its first report: that report creates it from the capture record's
/// copy. Reports for agents that are not PoPs of the capture, for a skipped PoP, or for a
/// capture that is over make no key; a first report that loses to the leader (which failed
/// the PoP meanwhile, creating its key) leaves the failure standing.
#[tokio::test]
async fn a_pops_first_report_creates_its_key_from_the_record() {
    use crate::model::{CaptureRecord, CaptureRequest, CaptureType};
    let plain = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
    let request = CaptureRequest { colo_name: Some("ord".into()), ..CaptureRequest::for_test(CaptureType::Full) };
    let mut record = CaptureRecord::from_request("acct", request, time::OffsetDateTime::now_utc());
    record.id = "c1".into();
    record.pops = vec![
        PopResult::new("ord01", "a", PopStatus::Pending),
        PopResult::new("ord02", "b", PopStatus::Pending),
        PopResult::new("ord03", "c", PopStatus::Pending),
        PopResult::new("ord05", "d", PopStatus::Pending),
        PopResult::new("ord04", "s", PopStatus::Skipped),
    ];
    plain.create_capture(&record).await.unwrap();
    let interloper = Interloper::over(&plain);
    let repo = Repo::new(interloper.clone());
    let progress = Progress::default();
    for agent in ["a", "s", "x"] {
        progress.push(agent, report("c1", pb::CaptureState::Running, 1));
    }
    progress.flush(&repo, false).await;
    let a = pop(&repo, "a").await;
    assert_eq!((a.pop.as_str(), a.status, a.packets), ("ord01", PopStatus::Running, 1));
    for agent in ["s", "x", "b", "c"] {
        assert!(repo.get_pop("c1", agent).await.unwrap().is_none(), "{agent}: no key");
    }

    let all = repo.store().list_keys("").await.unwrap();
    let key_b = all.iter().find(|k| k.ends_with("/c1/a")).expect("a's key").replace("/c1/a", "/c1/b");
    let failed =
        PopResult { error: Some("failed by the leader".into()), ..PopResult::new("ord02", "b", PopStatus::Failed) };
    *lock(&interloper.write_first) = Some((key_b, serde_json::to_vec(&failed).unwrap()));
    progress.push("b", report("c1", pb::CaptureState::Running, 2));
    progress.flush(&repo, false).await;
    assert!(lock(&interloper.write_first).is_none(), "the leader came first");
    let b = pop(&repo, "b").await;
    assert_eq!((b.status, b.error.as_deref()), (PopStatus::Failed, Some("failed by the leader")));

    // A key that does not decode: the report is dropped, not queued again round after round.
    let key_c = all.iter().find(|k| k.ends_with("/c1/a")).unwrap().replace("/c1/a", "/c1/c");
    repo.store().put(&key_c, b"not json".to_vec(), None).await.unwrap();
    progress.push("c", report("c1", pb::CaptureState::Running, 2));
    progress.flush(&repo, true).await;
    assert!(lock(&progress.state).queued.is_empty(), "dropped");
    repo.store().delete(&key_c).await.unwrap();

    // The record is read once for a start's rounds of first reports, not at each: with the
    // active index gone, d's first report still finds its PoP in the roster read above.
    repo.delete_active("c1").await.unwrap();
    progress.push("d", report("c1", pb::CaptureState::Running, 4));
    progress.flush(&repo, true).await;
    assert_eq!(pop(&repo, "d").await.pop, "ord05", "from the roster kept");
    // A replica that reads the record now finds the capture over: no key made.
    let fresh = Progress::default();
    fresh.push("c", report("c1", pb::CaptureState::Running, 3));
    fresh.flush(&repo, true).await;
    assert!(repo.get_pop("c1", "c").await.unwrap().is_none(), "the capture is over: no key made");
}
