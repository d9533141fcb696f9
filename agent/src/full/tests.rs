//! The spool's damaged entries and the order a delivered shard is forgotten in, on real
//! files in a temporary spool.

use std::path::Path;

use edgecap_capture::shard::{ShardFormat, ShardIdentity, ShardManifest};

use super::spool::{JobFile, write_json};
use super::uploads::remove_delivered;
use super::*;

fn jobs(spool: &Path) -> Jobs {
    let sources = edgecap_capture::source::factory(&edgecap_capture::source::SourceConfig::Libpcap);
    Jobs::open(FullCaptureConfig::new(spool.to_path_buf()), "a1", "pop1", None, sources).unwrap()
}

/// An agent's jobs on a replayed interface `sim0`, spooled in `spool`.
fn replay_jobs(spool: &Path) -> Arc<Jobs> {
    let sources = edgecap_capture::source::factory(&edgecap_capture::source::SourceConfig::Replay(Default::default()));
    Arc::new(
        Jobs::open(FullCaptureConfig::new(spool.to_path_buf()), "a1", "pop1", Some("sim0".into()), sources).unwrap(),
    )
}

/// A job capturing everything for a minute.
fn a_minute_of(id: &str) -> pb::StartCapture {
    pb::StartCapture {
        capture_id: id.into(),
        time_limit_ms: 60_000,
        scope: Some(pb::AccountScope { unrestricted: true, prefixes: vec![] }),
        ..Default::default()
    }
}

fn manifest(file: &str, sequence: u64) -> ShardManifest {
    ShardManifest {
        identity: ShardIdentity::default(),
        file: file.into(),
        sequence,
        format: ShardFormat::Pcap,
        packets: 1,
        bytes: 60,
        file_bytes: 100,
        first_ts_ns: Some(1),
        last_ts_ns: Some(1),
        kernel_dropped: None,
        agent_dropped: None,
        sha256: None,
        crc32c: None,
        part_crc32c: Vec::new(),
        stop_reason: None,
    }
}

/// A capture directory with a job file and an end (as after a restart).
fn capture_dir(spool: &Path, id: &str) -> std::path::PathBuf {
    let dir = spool.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    write_json(
        &dir.join("job.json"),
        &JobFile { capture_id: id.into(), interface: "eth0".into(), started_ns: 1, traceparent: String::new() },
    )
    .unwrap();
    dir
}

fn shard(dir: &Path, n: u64) {
    let name = format!("shard-{n:06}.pcap");
    std::fs::write(dir.join(&name), [0u8; 100]).unwrap();
    write_json(&dir.join(format!("{name}.json")), &manifest(&name, n)).unwrap();
}

#[test]
fn damaged_entries_are_set_aside_counted_once_and_block_nothing() {
    let spool = tempfile::tempdir().unwrap();
    let dir = capture_dir(spool.path(), "c1");
    shard(&dir, 1);
    // A manifest whose shard is missing, and one that does not parse.
    write_json(&dir.join("shard-000002.pcap.json"), &manifest("shard-000002.pcap", 2)).unwrap();
    std::fs::write(dir.join("shard-000003.pcap.json"), b"{ not json").unwrap();
    shard(&dir, 4);
    let jobs = jobs(spool.path());
    let ready = jobs.scan_spool();
    let files: Vec<&str> = ready.iter().map(|r| r.manifest.file.as_str()).collect();
    assert_eq!(files, ["shard-000001.pcap", "shard-000004.pcap"], "the good shards, in order, past the damaged ones");
    assert_eq!(jobs.damaged_entries(), 2);
    assert!(dir.join("shard-000002.pcap.json.damaged").exists() && dir.join("shard-000003.pcap.json.damaged").exists());
    // Set aside once: the next scan sees the same good shards and counts nothing new.
    assert_eq!(jobs.scan_spool().len(), 2);
    assert_eq!(jobs.damaged_entries(), 2);
}

#[test]
fn a_capture_whose_job_file_does_not_parse_is_set_aside_and_the_rest_opens() {
    let spool = tempfile::tempdir().unwrap();
    let good = capture_dir(spool.path(), "good");
    shard(&good, 1);
    let bad = capture_dir(spool.path(), "bad");
    std::fs::write(bad.join("job.json"), b"\x00\x01garbage").unwrap();
    let jobs = jobs(spool.path());
    assert_eq!(jobs.damaged_entries(), 1);
    assert!(spool.path().join("bad.damaged").is_dir(), "kept on disk for an operator");
    let ready = jobs.scan_spool();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].capture_id, "good");
    // A capture found after a restart still says when it began (its job.json).
    let reports = jobs.reports(true);
    assert_eq!(reports.iter().map(|r| (r.capture_id.as_str(), r.started_unix_ns)).collect::<Vec<_>>(), [("good", 1)]);
}

#[test]
fn a_delivered_shard_loses_its_manifest_first() {
    let spool = tempfile::tempdir().unwrap();
    let dir = capture_dir(spool.path(), "c1");
    shard(&dir, 1);
    let jobs = jobs(spool.path());
    let ready = jobs.scan_spool();
    assert_eq!(ready.len(), 1);
    // The shard cannot be removed (a crash at that moment is the same): a directory in its
    // place that is not empty.
    std::fs::remove_file(&ready[0].shard_path).unwrap();
    std::fs::create_dir_all(ready[0].shard_path.join("x")).unwrap();
    assert!(remove_delivered(&ready[0].manifest_path, &ready[0].shard_path).is_err());
    // The manifest is already gone, so the shard is not offered again (it would be retried
    // forever otherwise), and it counts as nothing damaged.
    assert!(jobs.scan_spool().is_empty());
    assert_eq!(jobs.damaged_entries(), 0);
}

#[test]
fn a_job_without_an_account_scope_is_refused_before_anything_opens() {
    let dir = tempfile::tempdir().unwrap();
    let sources = edgecap_capture::source::factory(&edgecap_capture::source::SourceConfig::Replay(Default::default()));
    let jobs = Jobs::open(FullCaptureConfig::new(dir.path().to_path_buf()), "a1", "pop1", Some("sim0".into()), sources)
        .unwrap();
    let job = pb::StartCapture {
        capture_id: "0123456789abcdef0123456789abcdef".into(),
        time_limit_ms: 1000,
        ..Default::default()
    };
    let refused = jobs.prepare(&job, &dir.path().join(&job.capture_id), None).err().unwrap();
    assert!(refused.contains("no account scope"), "{refused}");
    assert!(!dir.path().join(&job.capture_id).exists(), "nothing was spooled");
    // With one it starts (an unrestricted scope is said explicitly).
    let scoped = pb::StartCapture { scope: Some(pb::AccountScope { unrestricted: true, prefixes: vec![] }), ..job };
    assert!(jobs.prepare(&scoped, &dir.path().join(&scoped.capture_id), None).is_ok());
    let bad = pb::StartCapture {
        scope: Some(pb::AccountScope {
            unrestricted: false,
            prefixes: vec!["10.0.0.0/8".into(), "10.1.0.0/16".into()],
        }),
        capture_id: "0123456789abcdef0123456789abcde0".into(),
        ..scoped
    };
    assert!(jobs.prepare(&bad, &dir.path().join(&bad.capture_id), None).err().unwrap().contains("prefixes"));
}

#[tokio::test]
async fn a_spooled_shard_whose_bytes_changed_since_its_manifest_is_found_out() {
    let spool = tempfile::tempdir().unwrap();
    let dir = capture_dir(spool.path(), "c1");
    shard(&dir, 1);
    let path = dir.join("shard-000001.pcap");
    let mut m = manifest("shard-000001.pcap", 1);
    let jobs = jobs(spool.path());
    // Without a CRC32C there is nothing to compare: taken as intact.
    assert!(jobs.spooled_shard_intact(&path, &m).await);
    m.crc32c = Some(edgecap_capture::shard::file_crc32c(&path).unwrap());
    assert!(jobs.spooled_shard_intact(&path, &m).await);
    // One bit flipped on disk, same length: the bucket's BadDigest is this disk's fault.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[50] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(!jobs.spooled_shard_intact(&path, &m).await);
}

#[tokio::test]
async fn an_upload_task_that_panics_fails_its_capture_and_frees_it() {
    let mut running = super::inflight::InFlight::default();
    running.spawn("c1".into(), async { panic!("a bug in an upload") });
    running.spawn("c2".into(), async { Ok(()) });
    assert!(running.busy_for("c1") && running.busy_for("c2") && !running.busy_for("c3"));
    let mut ended = Vec::new();
    while let Some((capture_id, result)) = running.next().await {
        ended.push((capture_id, result.map_err(|e| e.to_string())));
    }
    ended.sort();
    assert_eq!(ended[0].0, "c1", "the panicked task is still c1's: {ended:?}");
    assert!(ended[0].1.as_ref().is_err_and(|e| e.contains("panicked")), "{ended:?}");
    assert_eq!(ended[1], ("c2".to_string(), Ok(())));
    assert!(running.is_empty());
    assert!(!running.busy_for("c1"), "freed, so its shards are offered again");
}

#[test]
fn an_ended_capture_without_shards_leaves_the_scans_and_its_directory_for_a_line() {
    let spool = tempfile::tempdir().unwrap();
    let done = capture_dir(spool.path(), "done");
    let busy = capture_dir(spool.path(), "busy");
    shard(&busy, 1);
    let jobs = jobs(spool.path());
    // One still being started: its directory is empty, but shards may still come.
    let starting = spool.path().join("starting");
    std::fs::create_dir_all(&starting).unwrap();
    lock(&jobs.jobs).insert("starting".into(), Job::reserved(starting.clone()));
    let files = |jobs: &Jobs| {
        let mut f: Vec<String> = jobs.scan_spool().iter().map(|r| r.capture_id.clone()).collect();
        f.sort();
        f
    };
    assert_eq!(files(&jobs), ["busy"]);
    let live = |id: &str| lock(&jobs.jobs).contains_key(id);
    let finished = |id: &str| jobs.finished.contains(id);
    assert!(finished("done") && !live("done") && live("busy") && live("starting"));
    assert!(!done.exists(), "a finished capture's directory is removed once its line is written");
    assert!(!jobs.reserve("done"), "a repeated start of a finished capture is refused");

    // The measure walks the live captures' directories.
    let measured = jobs.spool_bytes(std::time::Duration::ZERO);
    shard(&starting, 1);
    assert!(jobs.spool_bytes(std::time::Duration::ZERO) > measured, "a live capture's shard is measured");
    assert_eq!(files(&jobs), ["busy", "starting"]);
    let reports = jobs.reports(true);
    let closed = |id: &str| reports.iter().find(|r| r.capture_id == id).map(|r| r.shards_closed);
    assert_eq!((closed("done"), closed("busy")), (Some(0), Some(1)));
    // Reported in full just now: not again before its repeat is due.
    assert!(jobs.reports(false).iter().all(|r| r.capture_id != "done"));

    // Half forgotten (its manifest removed, its file not yet): the file can never be
    // delivered, so the scan removes it and the capture drains.
    std::fs::remove_file(busy.join("shard-000001.pcap.json")).unwrap();
    let reports = jobs.reports(false);
    assert!(finished("busy") && !live("busy") && !busy.exists());
    // Its first final state goes out at once.
    let busy_report = reports.iter().find(|r| r.capture_id == "busy").expect("busy's final state");
    assert_eq!(busy_report.capture_state, pb::CaptureState::Failed as i32, "{busy_report:?}");
    assert!(busy_report.interrupted, "cut short by the restart: {busy_report:?}");

    // Ended with a shard cut short (no manifest: a failed write), and with one whose manifest
    // was set aside as damaged: the first is removed, the second stays for an operator (and
    // its directory with it), and neither keeps the capture among the live ones.
    // (Ended in this run: a restart would take the directory over through `recover`.)
    let failed = capture_dir(spool.path(), "failed");
    std::fs::write(failed.join("shard-000001.pcap"), [0u8; 100]).unwrap();
    shard(&failed, 2);
    std::fs::rename(failed.join("shard-000002.pcap.json"), failed.join("shard-000002.pcap.json.damaged")).unwrap();
    let end = super::spool::EndFile {
        counters: Default::default(),
        stop_reason: crate::convert::StopReason::Failed,
        error: "write: no space left on device".into(),
        interrupted: false,
    };
    lock(&jobs.jobs).insert("failed".into(), Job::ended(failed.clone(), end.clone()));
    assert!(jobs.scan_spool().iter().all(|r| r.capture_id != "failed"));
    assert!(finished("failed") && !live("failed"));
    assert!(!failed.join("shard-000001.pcap").exists() && failed.join("shard-000002.pcap").exists());
    assert!(failed.join("shard-000002.pcap.json.damaged").exists() && !failed.join("job.json").exists());
    // A shard that cannot be removed (a non-empty directory in its place) keeps it live.
    let stuck = capture_dir(spool.path(), "stuck");
    std::fs::create_dir_all(stuck.join("shard-000001.pcap/x")).unwrap();
    lock(&jobs.jobs).insert("stuck".into(), Job::ended(stuck.clone(), end));
    let _ = jobs.scan_spool();
    assert!(live("stuck") && !finished("stuck"));

    // After a restart the finished captures are kept from their lines, with their final
    // states as reported before; the live ones from their directories (those with a job file).
    drop(jobs);
    let again = self::jobs(spool.path());
    assert!(again.finished.contains("done") && again.finished.contains("busy") && again.finished.contains("failed"));
    assert!(lock(&again.jobs).contains_key("stuck") && !again.finished.contains("stuck"));
    assert!(!again.reserve("failed"));
    let reports = again.reports(true);
    let failed_report = reports.iter().find(|r| r.capture_id == "failed").expect("failed's final state");
    assert_eq!(failed_report.error, "write: no space left on device");
    assert_eq!(failed_report.capture_state, pb::CaptureState::Failed as i32);
    assert_eq!(reports.iter().filter(|r| r.capture_id == "done").count(), 1);
}

#[test]
fn a_running_capture_holds_no_blocking_thread() {
    // One blocking thread in all: a capture that held one while it ran would keep the second
    // from opening until the first ended (a minute here).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jobs = replay_jobs(dir.path());
    let ids = ["0123456789abcdef0123456789abcde1", "0123456789abcdef0123456789abcde2"];
    let running = |id: &str| lock(&jobs.jobs).get(id).is_some_and(|j| j.stop.is_some());
    runtime.block_on(async {
        // One after the other: the second is asked for once the first runs.
        let mut started = Vec::new();
        for id in ids {
            let job = a_minute_of(id);
            started.push(tokio::spawn(jobs.clone().start(job)));
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !running(id) {
                assert!(std::time::Instant::now() < give_up, "{id} running while the other runs");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        for id in ids {
            jobs.stop(id);
        }
        for task in started {
            tokio::time::timeout(std::time::Duration::from_secs(20), task).await.unwrap().unwrap();
        }
    });
    for id in ids {
        let end: super::spool::EndFile = super::spool::read_json(&dir.path().join(id).join("end.json")).unwrap();
        assert_eq!(end.stop_reason, crate::convert::StopReason::Stopped, "{id}: its end recorded");
        assert!(lock(&jobs.jobs)[id].end.is_some() && !running(id));
    }
}

#[test]
fn a_capture_stopped_while_it_opens_stops_once_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = replay_jobs(dir.path());
    let id = "0123456789abcdef0123456789abcde3";
    let job = a_minute_of(id);
    // The stop comes between the reservation and the running capture (no handle yet).
    assert!(jobs.reserve(id));
    jobs.stop(id);
    let (tx, ended) = std::sync::mpsc::sync_channel(1);
    let on_end = edgecap_capture::session::OnEnd::new(move || {
        let _ = tx.try_send(());
    });
    let started = jobs.open_reserved(job, on_end).expect("opened");
    // Not a minute: stopped as soon as it ran.
    ended.recv_timeout(std::time::Duration::from_secs(20)).expect("the capture ended at once");
    jobs.end_job(started);
    let end: super::spool::EndFile = super::spool::read_json(&dir.path().join(id).join("end.json")).unwrap();
    assert_eq!(end.stop_reason, crate::convert::StopReason::Stopped);
}

#[test]
fn a_started_capture_is_reported_running_once_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = replay_jobs(dir.path());
    let open = |id: &str| {
        let job = a_minute_of(id);
        let (tx, ended) = std::sync::mpsc::sync_channel(1);
        let on_end = edgecap_capture::session::OnEnd::new(move || {
            let _ = tx.try_send(());
        });
        assert!(jobs.reserve(id));
        (jobs.open_reserved(job, on_end).expect("opened"), ended)
    };
    let (running, ended_running) = ("0123456789abcdef0123456789abcde4", "0123456789abcdef0123456789abcde5");
    let before = edgecap_common::now_ns();
    let (first, first_ended) = open(running);
    let reports = jobs.started_reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].capture_id, running);
    // When it began running, for the PoP's `started_at`.
    assert!((before..=edgecap_common::now_ns()).contains(&reports[0].started_unix_ns), "{reports:?}");
    assert_eq!(reports[0].capture_state, pb::CaptureState::Running as i32);
    assert!(reports[0].counters.is_some());
    assert!(jobs.started_reports().is_empty(), "a first report is sent once");
    // One that ended before its first report went out is not reported running: its end is
    // for the full reports (with its spooled shards counted).
    let (second, second_ended) = open(ended_running);
    jobs.stop(ended_running);
    second_ended.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    jobs.end_job(second);
    assert!(jobs.started_reports().is_empty());
    // A new connection starts from the full reports.
    jobs.stop(running);
    first_ended.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    jobs.end_job(first);
    let (third, third_ended) = open("0123456789abcdef0123456789abcde6");
    jobs.forget_started();
    assert!(jobs.started_reports().is_empty());
    jobs.stop("0123456789abcdef0123456789abcde6");
    third_ended.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    jobs.end_job(third);
}

#[test]
fn final_states_are_repeated_less_often_as_they_age() {
    use super::finished::next_final;
    let s = std::time::Duration::from_secs;
    let ended = std::time::Instant::now();
    assert_eq!(next_final(ended, ended + s(10)), ended + s(40), "every 30 s at first");
    assert_eq!(next_final(ended, ended + s(40)), ended + s(80), "then after half its age by then");
    assert_eq!(next_final(ended, ended + s(600)), ended + s(1200), "reported at 10 min: next at 20");
    assert_eq!(next_final(ended, ended + s(3000)), ended + s(6000));
}
