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

    // A settled directory (a drained capture's) is counted at its size then, not walked: the
    // file put there afterwards (which no capture would do) is not seen until it is forgotten.
    std::fs::create_dir(dir.path().join("c2")).unwrap();
    std::fs::write(dir.path().join("c2/end.json"), [0u8; 7]).unwrap();
    meter.settle(&dir.path().join("c2"));
    std::fs::write(dir.path().join("c2/late"), [0u8; 1000]).unwrap();
    assert_eq!(meter.bytes(dir.path(), zero, &[]), 157);
    let c2 = [dir.path().join("c2")];
    assert_eq!(meter.bytes(dir.path(), zero, &c2), 157, "named live after it settled: counted once");
    meter.forget(&dir.path().join("c2"));
    assert_eq!(meter.bytes(dir.path(), zero, &[]), 1157);
    std::fs::remove_dir_all(dir.path().join("c2")).unwrap();
    assert_eq!(meter.bytes(dir.path(), zero, &[]), 150);
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
    std::fs::write(dir.path().join("c9.damaged"), [0u8; 3]).unwrap();
    let meter = super::SpoolMeter::surveying_every(std::time::Duration::from_secs(3600));
    meter.settle(&c2);
    let live = [c1.clone()];
    // The first measure lists the spool: the entry set aside is found there.
    assert_eq!(meter.bytes(dir.path(), zero, &live), 23);
    // A live capture's new shard is seen at the next measure; the settled one is not walked;
    // what appears beside them waits for the next listing.
    std::fs::write(c1.join("shard-000001.pcap"), [0u8; 100]).unwrap();
    std::fs::write(c2.join("late"), [0u8; 1000]).unwrap();
    std::fs::write(dir.path().join("operator-file"), [0u8; 5000]).unwrap();
    assert_eq!(meter.bytes(dir.path(), zero, &live), 123);
    // A capture that has drained is settled at its size then and no longer named live.
    meter.settle(&c1);
    assert_eq!(meter.bytes(dir.path(), zero, &[]), 123);
    meter.forget(&c1);
    std::fs::remove_dir_all(&c1).unwrap();
    assert_eq!(meter.bytes(dir.path(), zero, &[]), 13);
    // The next listing counts what is not a capture's.
    let meter = super::SpoolMeter::surveying_every(zero);
    meter.settle(&c2);
    assert_eq!(meter.bytes(dir.path(), zero, &[]), 1010 + 3 + 5000);
    // A settled directory removed by someone else is no longer counted after a listing.
    std::fs::remove_dir_all(&c2).unwrap();
    assert_eq!(meter.bytes(dir.path(), zero, &[]), 3 + 5000);
}
