//! The live capture engine against tcpdump, on a veth pair between two namespaces, with
//! real captures replayed by tcpreplay: the same packets, exact limits, stop, counted drops,
//! and bad filters refused before anything is opened.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edgecap_e2e::{NetNs, Proc, bin, require_root, require_tool, sweep_stale, veth, wait_for};
use edgecap_merge::{CaptureReader, Record};

fn testdata(file: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/pcaps").join(file);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// (ts_ns, orig_len, bytes) of every packet in a pcap/pcapng file.
fn packets(path: &Path) -> Vec<(u64, u32, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = CaptureReader::open(&bytes[..]).unwrap();
    let mut r = Record::default();
    let mut out = Vec::new();
    while reader.next_record(&mut r).unwrap() {
        out.push((r.ts_ns, r.orig_len, r.bytes().to_vec()));
    }
    out
}

struct Pair {
    tx: NetNs,
    rx: NetNs,
    vtx: String,
    vrx: String,
    dir: tempfile::TempDir,
}

fn setup(test: &str) -> Option<Pair> {
    if !require_root(test) || !require_tool(test, "tcpreplay") || !require_tool(test, "tcpdump") {
        return None;
    }
    sweep_stale();
    let tx = NetNs::new("tx");
    let rx = NetNs::new("rx");
    let (vtx, vrx) = veth(&tx, "10.213.0.1/24", &rx, "10.213.0.2/24");
    Some(Pair { tx, rx, vtx, vrx, dir: tempfile::tempdir().unwrap() })
}

impl Pair {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ours(&self, name: &str, extra: &[&str]) -> Proc {
        let out = self.path(name);
        let mut args = vec!["capture", "--iface", &self.vrx, "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut p = self.rx.spawn(bin("edgecap-agent"), &args, &self.path(&format!("{name}.log")));
        wait_for("edgecap-agent to capture", Duration::from_secs(20), || {
            p.assert_running("edgecap-agent capture");
            p.log_text().contains("capturing on").then_some(())
        });
        p
    }

    fn tcpdump(&self, name: &str, filter: &str) -> Proc {
        self.tcpdump_with(name, &[filter])
    }

    /// tcpdump writing `name`, with `extra` arguments (options, then the filter).
    fn tcpdump_with(&self, name: &str, extra: &[&str]) -> Proc {
        let out = self.path(name);
        let mut args = vec!["-i", &self.vrx, "-n", "-U", "-B", "8192", "-w", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut p = self.rx.spawn("tcpdump", &args, &self.path(&format!("{name}.log")));
        wait_for("tcpdump to listen", Duration::from_secs(20), || {
            p.assert_running("tcpdump");
            p.log_text().contains("listening on").then_some(())
        });
        p
    }

    fn replay(&self, file: &str, args: &[&str]) {
        let out =
            self.tx.cmd("tcpreplay").args(["-q", "-i", &self.vtx]).args(args).arg(testdata(file)).output().unwrap();
        assert!(out.status.success(), "tcpreplay: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// SIGINT, then wait for the process to exit by itself.
fn interrupt(p: &mut Proc) {
    let _ = Command::new("kill").args(["-INT", &p.child.id().to_string()]).status();
    exited(p);
}

fn exited(p: &mut Proc) -> std::process::ExitStatus {
    wait_for("the capture to exit", Duration::from_secs(30), || p.child.try_wait().ok().flatten())
}

/// The `key=value` counters line edgecap-agent prints at the end.
fn counters(p: &Proc) -> std::collections::HashMap<String, String> {
    let log = p.log_text();
    let line = log.lines().find(|l| l.starts_with("received=")).unwrap_or_else(|| panic!("no counters in:\n{log}"));
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn n(c: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    c[key].parse().unwrap()
}

#[test]
fn captures_the_same_packets_as_tcpdump() {
    let Some(pair) = setup("captures_the_same_packets_as_tcpdump") else { return };
    for (file, filter, expected) in [("DnsPackets.pcap", "udp", 464usize), ("test_ethernet.pcap", "tcp", 10)] {
        let ours_name = format!("ours-{file}");
        let theirs_name = format!("tcpdump-{file}");
        let mut ours = pair.ours(&ours_name, &["--filter", filter]);
        let mut theirs = pair.tcpdump(&theirs_name, filter);
        pair.replay(file, &["--pps", "2000"]);
        std::thread::sleep(Duration::from_millis(1500)); // TPACKET_V3 blocks retire within 1 s
        interrupt(&mut ours);
        interrupt(&mut theirs);
        let a = packets(&pair.path(&ours_name));
        let b = packets(&pair.path(&theirs_name));
        assert_eq!(b.len(), expected, "{file}: tcpdump saw every replayed packet");
        assert_eq!(a.len(), b.len(), "{file}: same packet count as tcpdump");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(x.2 == y.2 && x.1 == y.1, "{file}: record {i} differs from tcpdump's");
            // Two sockets stamp the same packet within a few ms of each other.
            assert!(x.0.abs_diff(y.0) < 50_000_000, "{file}: record {i} timestamps {} vs {}", x.0, y.0);
        }
        let c = counters(&ours);
        assert_eq!(n(&c, "written") as usize, expected);
        assert_eq!((n(&c, "kernel_drops"), n(&c, "agent_drops")), (0, 0));
        assert_eq!(c["stop_reason"], "stopped");
        // The manifest says what the file holds.
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(pair.path(&format!("{ours_name}.json"))).unwrap()).unwrap();
        assert_eq!(manifest["packets"], expected);
        assert_eq!(manifest["filter"], filter);
        // Its CRC32C (the default checksum) is the file's.
        let file_crc = edgecap_capture::shard::file_crc32c(&pair.path(&ours_name)).unwrap();
        assert_eq!(manifest["crc32c"], file_crc.as_str());
        assert_eq!(manifest["sha256"], serde_json::Value::Null);
    }
}

#[test]
fn limits_stop_exactly_and_say_why() {
    let Some(pair) = setup("limits_stop_exactly_and_say_why") else { return };
    let mut reference = pair.tcpdump("reference.pcap", "udp");
    let mut by_packets = pair.ours("packets.pcap", &["--filter", "udp", "--packet-limit", "100"]);
    let mut by_bytes = pair.ours("bytes.pcap", &["--filter", "udp", "--byte-limit", "20000"]);
    pair.replay("DnsPackets.pcap", &["--pps", "2000"]);
    std::thread::sleep(Duration::from_millis(1500));
    interrupt(&mut reference);
    assert!(exited(&mut by_packets).success());
    assert!(exited(&mut by_bytes).success());
    let all = packets(&pair.path("reference.pcap"));
    assert_eq!(all.len(), 464);

    let got = packets(&pair.path("packets.pcap"));
    assert_eq!(got.len(), 100, "exactly the packet limit");
    assert!(got.iter().zip(&all).all(|(a, b)| a.2 == b.2), "the first 100 packets");
    assert_eq!(counters(&by_packets)["stop_reason"], "packet_limit");

    let got = packets(&pair.path("bytes.pcap"));
    let bytes: usize = got.iter().map(|p| p.2.len()).sum();
    let next = all[got.len()].2.len();
    assert!(bytes <= 20000 && bytes + next > 20000, "stops at the byte limit: {bytes} + next {next}");
    assert!(got.iter().zip(&all).all(|(a, b)| a.2 == b.2));
    let c = counters(&by_bytes);
    assert_eq!(c["stop_reason"], "byte_limit");
    assert_eq!(n(&c, "bytes") as usize, bytes);

    // Time limit on a quiet interface: it still ends on time.
    let mut by_time = pair.ours("time.pcap", &["--filter", "udp", "--time-limit", "1"]);
    assert!(exited(&mut by_time).success());
    assert_eq!(counters(&by_time)["stop_reason"], "time_limit");
    assert_eq!(packets(&pair.path("time.pcap")).len(), 0);
}

#[test]
fn stop_mid_capture_keeps_what_was_captured() {
    let Some(pair) = setup("stop_mid_capture_keeps_what_was_captured") else { return };
    let mut ours = pair.ours("stopped.pcapng", &["--filter", "udp", "--format", "pcapng"]);
    let tx = pair
        .tx
        .cmd("tcpreplay")
        .args(["-q", "-i", &pair.vtx, "--pps", "200"])
        .arg(testdata("DnsPackets.pcap"))
        .spawn()
        .unwrap();
    let mut tx = Proc { child: tx, log: pair.path("tx.log") };
    std::thread::sleep(Duration::from_millis(1500));
    interrupt(&mut ours);
    let c = counters(&ours);
    assert_eq!(c["stop_reason"], "stopped");
    let got = packets(&pair.path("stopped.pcapng"));
    assert!(!got.is_empty() && got.len() < 464, "a part of the replay: {}", got.len());
    assert_eq!(got.len() as u64, n(&c, "written"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pair.path("stopped.pcapng.json")).unwrap()).unwrap();
    assert_eq!(manifest["stop_reason"], "stopped");
    assert_eq!(manifest["packets"].as_u64().unwrap() as usize, got.len());
    let _ = tx.child.kill();
}

#[test]
fn a_slow_writer_shows_up_as_counted_agent_drops() {
    let Some(pair) = setup("a_slow_writer_shows_up_as_counted_agent_drops") else { return };
    let mut ours = pair.ours("slow.pcap", &["--filter", "udp", "--writer-delay-us", "3000", "--queue-batches", "1"]);
    // More packets than two batches of 1024 (the one being written and the one queued).
    pair.replay("DnsPackets.pcap", &["--topspeed", "--loop", "10"]);
    std::thread::sleep(Duration::from_millis(1500));
    interrupt(&mut ours);
    let c = counters(&ours);
    let (matched, written, agent, kernel) =
        (n(&c, "matched"), n(&c, "written"), n(&c, "agent_drops"), n(&c, "kernel_drops"));
    assert!(agent > 0, "drops are reported, not hidden: {c:?}");
    assert_eq!(matched, written + agent, "every delivered packet is written or counted as dropped: {c:?}");
    assert_eq!(
        matched + kernel,
        10 * 464,
        "and with the kernel's drops, every replayed packet is accounted for: {c:?}"
    );
    assert_eq!(packets(&pair.path("slow.pcap")).len() as u64, written);
}

#[test]
fn bad_filters_are_refused_before_anything_is_opened() {
    // No privileges needed: the filter is checked before the interface is touched.
    for (args, says) in [
        (vec!["--filter-v1", r#"{"source_port":70000}"#], "--filter-v1"),
        (vec!["--filter-v1", r#"{"protocol":300}"#], "--filter-v1"),
        (vec!["--filter-v1", r#"{"source_address":"1.2.3.4 or 1=1"}"#], "source_address"),
        (vec!["--filter-v1", r#"{"portz":80}"#], "--filter-v1"),
        (vec!["--filter-v1", r#"{"protocol":1,"destination_port":53}"#], "protocol"),
        (vec!["--filter", "tcp port 80; rm -rf /"], "filter_bpf"),
        (vec!["--filter", "udp and ("], "filter_bpf"),
    ] {
        let out = Command::new(bin("edgecap-agent"))
            .args(["capture", "--iface", "no-such-iface0", "--out", "/nonexistent/x.pcap"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn captures_and_the_lookback_stop_on_a_silent_interface() {
    // A fresh namespace's loopback carries nothing: libpcap blocks in poll there, and both
    // the live capture and the lookback must still stop on time (a stop that waited for the
    // next packet would hang an agent's shutdown forever).
    if !require_root("captures_and_the_lookback_stop_on_a_silent_interface") {
        return;
    }
    sweep_stale();
    let ns = NetNs::new("quiet");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quiet.pcap");
    let mut p = ns.spawn(
        bin("edgecap-agent"),
        &["capture", "--iface", "lo", "--out", out.to_str().unwrap(), "--time-limit", "1", "--with-lookback"],
        &dir.path().join("quiet.log"),
    );
    let status = exited(&mut p);
    assert!(status.success(), "{}", p.log_text());
    assert_eq!(counters(&p)["stop_reason"], "time_limit");
    assert!(p.log_text().contains("lookback:"), "{}", p.log_text());
}

/// Packet sockets open in a namespace (`/proc/net/packet`, one line per socket after the header).
fn packet_sockets(ns: &NetNs) -> usize {
    let out = ns.cmd("cat").arg("/proc/net/packet").output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().skip(1).filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn a_capture_feeds_the_lookback_from_its_own_ring_and_hands_it_back_under_traffic() {
    let Some(pair) = setup("a_capture_feeds_the_lookback_from_its_own_ring_and_hands_it_back_under_traffic") else {
        return;
    };
    // Everything on the interface, with nanosecond stamps: what the lookback must hold.
    let everything = pair.path("everything.pcap");
    let mut reference = pair.tcpdump_with("everything.pcap", &["--time-stamp-precision", "nano"]);
    // The lookback runs alone for 2 s, the capture takes it over for 1.5 s while the replay
    // runs, and it runs on alone for 4 s more, past the end of the replay.
    let out = pair.path("shard.pcap");
    let held = pair.path("lookback.pcap");
    let mut ours = pair.rx.spawn(
        bin("edgecap-bench"),
        &[
            "capture",
            "--iface",
            &pair.vrx,
            "--out",
            out.to_str().unwrap(),
            "--filter",
            "udp dst port 53",
            "--time-limit",
            "1.5",
            "--with-lookback",
            "--lookback-lead-ms",
            "2000",
            "--lookback-linger-ms",
            "4000",
            "--lookback-dump",
            held.to_str().unwrap(),
        ],
        &pair.path("ours.log"),
    );
    wait_for("the lookback to start", Duration::from_secs(20), || {
        ours.assert_running("edgecap-bench capture");
        ours.log_text().contains("lookback on").then_some(())
    });
    assert_eq!(packet_sockets(&pair.rx), 2, "tcpdump's and the lookback's");
    // 464 x 8 packets at 1000 pps: about 3.7 s, across both hand-overs.
    let replay = pair
        .tx
        .cmd("tcpreplay")
        .args(["-q", "-i", &pair.vtx, "--pps", "1000", "--loop", "8"])
        .arg(testdata("DnsPackets.pcap"))
        .spawn()
        .unwrap();
    wait_for("the capture to start", Duration::from_secs(20), || {
        ours.log_text().contains("capturing on").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(packet_sockets(&pair.rx), 2, "tcpdump's and the capture's: the lookback's own is closed");
    let replayed = replay.wait_with_output().unwrap();
    assert!(replayed.status.success());
    let status = exited(&mut ours);
    assert!(status.success(), "{}", ours.log_text());
    interrupt(&mut reference);

    // The lookback holds every packet of its time on the interface exactly once: nothing lost
    // or doubled at either hand-over (truncated to its 160-byte snap length).
    // (Both in timestamp order: the ring delivers a host's own packets among the others in
    // the order they reached it, not always in the order they were stamped.)
    let mut lookback = packets(&held);
    lookback.sort();
    let mut all = packets(&everything);
    all.sort();
    assert!(lookback.len() >= 464 * 8, "{} packets held", lookback.len());
    let (first, last) = (lookback[0].0, lookback[lookback.len() - 1].0);
    let window: Vec<_> = all.iter().filter(|p| p.0 >= first && p.0 <= last).collect();
    assert_eq!(lookback.len(), window.len(), "the lookback against tcpdump over the same time");
    for (i, (ours, theirs)) in lookback.iter().zip(&window).enumerate() {
        assert!(ours.0.abs_diff(theirs.0) < 1_000_000, "packet {i}: stamped {} and {}", ours.0, theirs.0);
        assert_eq!(ours.2[..], theirs.2[..theirs.2.len().min(160)], "packet {i}");
    }
    // The capture wrote exactly what its filter passes in its time: the filter ran in user
    // space on every packet.
    let shard = packets(&out);
    assert!(shard.len() > 100, "the capture ran under traffic: {} packets", shard.len());
    let (first, last) = (shard[0].0, shard[shard.len() - 1].0);
    let program = edgecap_capture::compile_offline(1, 65_535, "udp dst port 53").unwrap();
    let theirs: Vec<_> = all
        .iter()
        .filter(|p| p.0 >= first && p.0 <= last && edgecap_capture::offline::matches(&program, &p.2, p.1))
        .collect();
    assert_eq!(shard.len(), theirs.len(), "the same packets as the filter passes in that time");
    assert!(shard.iter().zip(&theirs).all(|(a, b)| a.2 == b.2));
    let c = counters(&ours);
    assert_eq!(n(&c, "written") as usize, shard.len());
    assert_eq!(n(&c, "received"), n(&c, "matched"), "received counts the filter's packets, not the interface's");
}
