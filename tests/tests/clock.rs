//! Clock offsets per PoP: two agents (the real agent code, replaying a pcap each) on one
//! coordinator, one of them with a clock deliberately 500 ms ahead (an injected clock for its
//! probes and its packets, not the system's). Its offset is measured on loopback within the
//! stated uncertainty and recorded per PoP; without correction its packets sit 500 ms late in
//! the merged file, and with `clock_correction` they are moved onto the coordinator's clock.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::path::Path;
use std::time::Duration;

use edgecap_agent::{Agent, AgentClock, AgentConfig};
use edgecap_capture::source::SourceConfig;
use edgecap_capture::source::replay::ReplayConfig;
use edgecap_coordinator::{Coordinator, CoordinatorConfig, RateLimits, UnscopedAccounts};
use edgecap_e2e::api_call;
use serde_json::json;

const TOKEN: &str = "clock-test-token-0123456789";
const SKEW_NS: i64 = 500_000_000;

/// A pcap of UDP frames from `source` (the last byte of 10.0.0.x), to loop.
fn frames(path: &Path, source: u8) {
    let mut w = edgecap_merge::write::PcapWriter::new(std::fs::File::create(path).unwrap(), 1, 65535, false).unwrap();
    let mut f = vec![0u8; 60];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, source]);
    f[30..34].copy_from_slice(&[10, 0, 0, 100]);
    w.packet(1_000_000_000, 60, &f).unwrap();
    w.finish().unwrap();
}

/// (timestamp, source) of every packet of a classic pcap file.
fn packets(path: &Path) -> Vec<(u64, u8)> {
    let bytes = std::fs::read(path).unwrap();
    let mut reader = edgecap_merge::CaptureReader::open(&bytes[..]).unwrap();
    let mut record = edgecap_merge::Record::default();
    let mut out = Vec::new();
    while reader.next_record(&mut record).unwrap() {
        out.push((record.ts_ns, record.bytes()[29]));
    }
    out
}

/// The stored file of capture `id` (its key holds the id).
fn find(dir: &Path, id: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find(&path, id) {
                return Some(found);
            }
        } else if path.to_string_lossy().contains(id) {
            return Some(path);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_skewed_pop_is_measured_and_its_packets_corrected() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "clock").unwrap();
    let tls = edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let objects = dir.path().join("objects");
    let coordinator = Coordinator::start(CoordinatorConfig {
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        storage: edgecap_storage::StorageConfig::LocalDir { root: objects.clone() },
        tmp_dir: dir.path().join("tmp"),
        rate_limits: RateLimits::off(),
        unscoped_accounts: UnscopedAccounts::Unrestricted,
        tokens: vec![("acct".into(), TOKEN.into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let endpoint = format!("https://127.0.0.1:{}", coordinator.grpc_addr.port());
    let agents = edgecap_common::tasks::Tasks::new();
    for (name, source, skew) in [("on-time", 1u8, 0i64), ("ahead", 2, SKEW_NS)] {
        let file = dir.path().join(format!("{name}.pcap"));
        frames(&file, source);
        let files = edgecap_tls::pki::issue_agent(&pki, name, &format!("pop-{name}")).unwrap();
        let mut config = AgentConfig::new(vec![endpoint.clone()], files, vec!["sim0".into()]);
        config.source = SourceConfig::Replay(ReplayConfig {
            file: Some(file),
            rate_pps: 200,
            clock_skew_ns: skew,
            ..Default::default()
        });
        config.clock = AgentClock { skew_ns: skew };
        let agent = Agent::start(config).unwrap();
        agents.spawn(agent.run(agents.token()));
    }
    // Connected, with a few clock probes answered.
    for _ in 0..100 {
        if coordinator.connected_agents().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let url = format!("http://{}/client/v4/accounts/acct/pcaps", coordinator.api_addr);
    let sample = |correct: bool| {
        let url = url.clone();
        async move {
            let offset = edgecap_coordinator::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
            let body = json!({"system": "magic-transit", "type": "simple", "time_limit": 2, "packet_limit": 10000,
                "offset_time": offset, "clock_correction": correct});
            let (status, created) = api_call("POST", &url, TOKEN, Some(body)).await;
            assert_eq!(status, 200, "{created}");
            let id = created["result"]["id"].as_str().unwrap().to_string();
            loop {
                let (_, v) = api_call("GET", &format!("{url}/{id}"), TOKEN, None).await;
                if v["result"]["status"] != "pending" {
                    assert_eq!(v["result"]["status"], "success", "{v:#}");
                    return v["result"].clone();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let plain = sample(false).await;
    // Each PoP's clock as measured: the skewed one within its uncertainty of -500 ms.
    for pop in plain["pops"].as_array().unwrap() {
        let offset = pop["clock_offset_us"].as_i64().unwrap();
        let uncertainty = pop["clock_uncertainty_us"].as_i64().unwrap();
        let expected = if pop["agent_id"] == "ahead" { -SKEW_NS / 1000 } else { 0 };
        assert!(
            (offset - expected).abs() <= uncertainty + 1000,
            "{}: offset {offset} us +/- {uncertainty} us, expected {expected}",
            pop["agent_id"]
        );
        assert!(uncertainty < 50_000, "loopback measures within 50 ms: {uncertainty} us");
    }
    let latest = |capture: &serde_json::Value, source: u8| -> u64 {
        let id = capture["id"].as_str().unwrap();
        let file = find(&objects, id).unwrap_or_else(|| panic!("no file of {id} under {}", objects.display()));
        packets(&file).iter().filter(|(_, s)| *s == source).map(|(t, _)| *t).max().unwrap()
    };
    // Uncorrected, both PoPs' newest packets are at the window's end (the skewed one by its
    // own clock); corrected, the skewed PoP's are 500 ms earlier, where they really were.
    let gap = |capture: &serde_json::Value| latest(capture, 1) as i64 - latest(capture, 2) as i64;
    assert!(gap(&plain).abs() < 60_000_000, "uncorrected gap {} ms", gap(&plain) / 1_000_000);
    let corrected = sample(true).await;
    assert_eq!(corrected["clock_correction"], true);
    let shift = gap(&corrected);
    assert!((shift - SKEW_NS).abs() < 60_000_000, "corrected gap {} ms, expected 500", shift / 1_000_000);
    agents.shutdown(Duration::from_secs(10)).await;
    coordinator.shutdown().await.unwrap();
}
