//! Tests of the spool's measure (`spool.rs`).

#[test]
fn the_spool_is_measured_again_only_when_the_last_measure_is_too_old() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("c1")).unwrap();
    std::fs::write(dir.path().join("c1/shard-000001.pcap"), [0u8; 100]).unwrap();
    // Listing the whole spool at every measure, as if nothing were known of it.
    let meter = super::SpoolMeter::surveying_every(std::time::Duration::ZERO);
    assert_eq!(meter.last(), 0, "nothing measured yet");
    let long = std::time::Duration::from_secs(3600);
    let zero = std::time::Duration::ZERO;
    assert_eq!(meter.bytes(dir.path(), long, &[]), 100);
    std::fs::write(dir.path().join("c1/shard-000002.pcap"), [0u8; 50]).unwrap();
    assert_eq!(meter.bytes(dir.path(), long, &[]), 100, "fresh enough: not walked again");
    assert_eq!(meter.bytes(dir.path(), zero, &[]), 150, "too old: walked again");
    assert_eq!(meter.last(), 150);
    // A live directory is counted once, not also among the others.
    assert_eq!(meter.bytes(dir.path(), zero, &[dir.path().join("c1")]), 150);
}

#[test]
fn the_spool_measure_walks_live_captures_and_lists_the_spool_only_now_and_then() {
    let dir = tempfile::tempdir().unwrap();
    let zero = std::time::Duration::ZERO;
    let (c1, c2) = (dir.path().join("c1"), dir.path().join("c2"));
    for d in [&c1, &c2] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("job.json"), [0u8; 10]).unwrap();
    }
    std::fs::write(dir.path().join("finished.jsonl"), [0u8; 3]).unwrap();
    let meter = super::SpoolMeter::surveying_every(std::time::Duration::from_secs(3600));
    let live = [c1.clone()];
    // The first measure lists the spool: what is not live is found there.
    assert_eq!(meter.bytes(dir.path(), zero, &live), 23);
    // A live capture's new shard is seen at the next measure; what appears elsewhere waits
    // for the next listing.
    std::fs::write(c1.join("shard-000001.pcap"), [0u8; 100]).unwrap();
    std::fs::write(c2.join("late"), [0u8; 1000]).unwrap();
    std::fs::write(dir.path().join("operator-file"), [0u8; 5000]).unwrap();
    assert_eq!(meter.bytes(dir.path(), zero, &live), 123);
    // The next listing counts it.
    let meter = super::SpoolMeter::surveying_every(zero);
    assert_eq!(meter.bytes(dir.path(), zero, &live), 110 + 1010 + 3 + 5000);
    std::fs::remove_dir_all(&c2).unwrap();
    assert_eq!(meter.bytes(dir.path(), zero, &live), 110 + 3 + 5000);
}
