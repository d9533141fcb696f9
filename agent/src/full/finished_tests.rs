//! Tests of the finished captures' file and queue (`finished.rs`), on real files.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{FILE, Finished, Moved, Record};
use crate::convert::StopReason;

fn record(id: &str, ended_ns: u64) -> Record {
    Record {
        capture_id: id.into(),
        started_ns: 1,
        ended_ns,
        shards_uploaded: 3,
        stream_dropped: 0,
        end: super::EndFile {
            counters: Default::default(),
            stop_reason: StopReason::Stopped,
            error: String::new(),
            interrupted: false,
        },
    }
}

/// `id` handed over as ended `ago`, its directory made with its two files.
fn moved(spool: &std::path::Path, id: &str, ago: Duration, reported: Option<Instant>) -> Moved {
    let dir = spool.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("job.json"), b"{}").unwrap();
    std::fs::write(dir.join("end.json"), b"{}").unwrap();
    let ended_ns = edgecap_common::now_ns() - ago.as_nanos() as u64;
    Moved { record: record(id, ended_ns), ended_at: Instant::now() - ago, reported, dir }
}

fn lines(spool: &std::path::Path) -> usize {
    std::fs::read_to_string(spool.join(FILE)).map_or(0, |t| t.lines().filter(|l| !l.is_empty()).count())
}

#[test]
fn finished_captures_are_lines_that_survive_a_restart_until_they_expire() {
    let spool = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let (finished, damaged) = Finished::open(spool.path(), hour, &HashSet::new());
    assert_eq!((finished.len(), damaged), (0, 0));
    let batch = vec![
        moved(spool.path(), "c1", Duration::from_secs(5), None),
        moved(spool.path(), "c2", Duration::from_secs(3000), None),
    ];
    finished.take(&batch);
    assert!(finished.contains("c1") && finished.contains("c2"));
    // An operator's file in a directory keeps the directory; the capture's own files go.
    std::fs::write(spool.path().join("c2/note"), b"mine").unwrap();
    finished.persist(batch);
    assert!(!spool.path().join("c1").exists());
    assert!(spool.path().join("c2/note").exists() && !spool.path().join("c2/end.json").exists());
    assert_eq!(lines(spool.path()), 2);
    drop(finished);

    // A torn last line (a crash in the middle of an append) and a line that is not ours.
    let mut text = std::fs::read(spool.path().join(FILE)).unwrap();
    text.extend_from_slice(b"{\"capture_id\":\"../x\",\"started_ns\":1}\n{\"capture_id\":\"c3\",\"sta");
    std::fs::write(spool.path().join(FILE), &text).unwrap();
    // Restarted 40 minutes later (c2 ended 50 + 40 minutes ago: expired), with c1's
    // directory back (a crash before its removal: the directory wins).
    let keep = Duration::from_secs(3600 - 2400);
    let (finished, damaged) = Finished::open(spool.path(), keep, &HashSet::new());
    assert_eq!(damaged, 2, "the two bad lines set aside");
    let aside = std::fs::read_to_string(spool.path().join(format!("{FILE}.damaged"))).unwrap();
    assert_eq!(aside.lines().filter(|l| !l.is_empty()).count(), 2);
    assert!(finished.contains("c1") && !finished.contains("c2"), "c2 is older than kept");
    assert_eq!(lines(spool.path()), 1, "rewritten with the kept ones only");
    // Due at once after a restart.
    let due: Vec<(String, u64)> = finished.due(false).into_iter().map(|r| (r.capture_id, r.ended_ns)).collect();
    assert_eq!(due, [("c1".to_string(), finished_ended_ns(&spool, "c1"))]);
    assert!(finished.due(false).is_empty(), "then not before its repeat");
    drop(finished);
    let skip: HashSet<String> = ["c1".to_string()].into();
    let (finished, _) = Finished::open(spool.path(), keep, &skip);
    assert!(!finished.contains("c1"), "its directory is there: taken over from it instead");
}

fn finished_ended_ns(spool: &tempfile::TempDir, id: &str) -> u64 {
    std::fs::read_to_string(spool.path().join(FILE))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .find(|r| r.capture_id == id)
        .unwrap()
        .ended_ns
}

#[test]
fn final_states_are_due_by_their_age_and_forgotten_after_the_keep() {
    let spool = tempfile::tempdir().unwrap();
    let keep = Duration::from_secs(600);
    let (finished, _) = Finished::open(spool.path(), keep, &HashSet::new());
    let now = Instant::now();
    let s = Duration::from_secs;
    let batch = vec![
        // Never reported: due now.
        moved(spool.path(), "fresh", s(1), None),
        // Ended 100 s ago, reported 10 s ago: next at 10 s + 90 s.
        moved(spool.path(), "waiting", s(100), Some(now - s(10))),
        // Ended 100 s ago, reported 60 s ago: next 40 s after it, so 20 s ago.
        moved(spool.path(), "due", s(100), Some(now - s(60))),
        // Kept long enough: forgotten at its turn, never reported again.
        moved(spool.path(), "expired", s(601), Some(now - s(1))),
    ];
    finished.take(&batch);
    finished.persist(batch);
    let mut due: Vec<String> = finished.due(false).into_iter().map(|r| r.capture_id).collect();
    due.sort();
    assert_eq!(due, ["due", "fresh"]);
    assert!(!finished.contains("expired") && finished.contains("waiting"));
    let all: HashSet<String> = finished.due(true).into_iter().map(|r| r.capture_id).collect();
    assert_eq!(all, ["due", "fresh", "waiting"].map(String::from).into(), "a new connection gets every one");
}

#[test]
fn a_torn_line_never_takes_the_next_one_with_it_and_a_spool_that_cannot_be_written_still_opens() {
    let spool = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    // A crash in the middle of an append left half a line, without its newline.
    std::fs::write(spool.path().join(FILE), b"{\"capture_id\":\"torn\",\"started").unwrap();
    // Neither the damaged lines' file nor the rewrite's temporary file can be written.
    std::fs::create_dir_all(spool.path().join(format!("{FILE}.damaged/x"))).unwrap();
    std::fs::create_dir_all(spool.path().join(format!("{FILE}.tmp/x"))).unwrap();
    let (finished, damaged) = Finished::open(spool.path(), hour, &HashSet::new());
    assert_eq!((finished.len(), damaged), (0, 1), "the agent opens its spool all the same");
    let next = vec![moved(spool.path(), "next", Duration::from_secs(1), None)];
    finished.take(&next);
    finished.persist(next);
    assert!(!spool.path().join("next").exists());
    drop(finished);
    let (finished, damaged) = Finished::open(spool.path(), hour, &HashSet::new());
    assert!(finished.contains("next"), "the line after the torn one is whole");
    assert_eq!(damaged, 1);
}

#[test]
fn the_file_is_rewritten_once_forgotten_lines_outnumber_the_kept() {
    let spool = tempfile::tempdir().unwrap();
    let keep = Duration::from_secs(60);
    let (finished, _) = Finished::open(spool.path(), keep, &HashSet::new());
    let old: Vec<Moved> =
        (0..100).map(|i| moved(spool.path(), &format!("old{i}"), Duration::from_secs(61), None)).collect();
    finished.take(&old);
    finished.persist(old);
    let young = vec![moved(spool.path(), "young", Duration::from_secs(1), None)];
    finished.take(&young);
    finished.persist(young);
    assert_eq!(lines(spool.path()), 101);
    assert_eq!(finished.due(false).len(), 1, "only the young one reported; the others forgotten");
    assert_eq!(lines(spool.path()), 1, "rewritten without the forgotten");
    assert!(std::fs::read_to_string(spool.path().join(FILE)).unwrap().contains("\"young\""));
}
