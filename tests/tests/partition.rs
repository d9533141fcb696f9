//! A PoP partitioned from the coordinator and from S3 during a full capture, then healed.
//!
//! The coordinator and an S3-compatible server run in a core namespace; the PoP's namespace
//! reaches them over its uplink (a veth pair). The agent captures on a second interface inside
//! the PoP (DNS traffic replayed there with tcpreplay), as a PoP's capture port is not its
//! management link. Five seconds into a 45-second capture the uplink goes down for 30 s: the
//! agent keeps capturing into its spool, reconnects when the link is back, uploads, and the
//! merged file holds every packet it wrote, including those captured during the partition.
//! (The coordinator's reconnect grace is set above the partition, as an operator who wants
//! to ride out such partitions would.)

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgecap_e2e::{
    NetNs, S3Server, bin, core_pki, edgecap_cli, pop_namespaces, require_root, require_tool, sweep_stale,
    tshark_packets, wait_for,
};

const TOKEN: &str = "partition-token-0123456789";
const BUCKET: &str = "partition";

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn a_partitioned_pop_keeps_capturing_and_delivers_everything_when_healed() {
    let test = "a_partitioned_pop_keeps_capturing_and_delivers_everything_when_healed";
    if !require_root(test) || !require_tool(test, "tshark") || !require_tool(test, "tcpreplay") {
        return;
    }
    sweep_stale();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let pki = core_pki(dir.path(), 1);
    let core = NetNs::new("core");
    let Some(s3) = S3Server::launch_in(test, &core) else { return };
    s3.create_bucket(BUCKET);
    s3.write_credentials(std::path::Path::new(&path("s3.json")), BUCKET);
    let pop = pop_namespaces(&core, &pki, 1).remove(0);

    // The capture port: a veth pair inside the PoP, traffic replayed into one end.
    ip(&["-n", &pop.ns.name, "link", "add", "capa", "type", "veth", "peer", "name", "capb"]);
    ip(&["-n", &pop.ns.name, "link", "set", "capa", "up"]);
    ip(&["-n", &pop.ns.name, "link", "set", "capb", "up"]);

    let token = format!("acct:{TOKEN}");
    let mut coordinator = core.spawn(
        bin("edgecap-coordinator"),
        &[
            "--data-dir",
            &path("data"),
            "--pki-dir",
            pki.to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:9440",
            "--grpc-listen",
            "0.0.0.0:7443",
            "--token",
            &token,
            "--no-rate-limits",
            "--unscoped-accounts",
            "unrestricted",
            "--allow-private-endpoints",
            "--s3-credentials",
            &path("s3.json"),
            "--reconnect-grace",
            "120",
        ],
        &dir.path().join("coordinator.log"),
    );
    let mut agent = pop.ns.spawn(
        bin("edgecap-agent"),
        &[
            "run",
            "--coordinator",
            "https://10.213.1.1:7443",
            "--iface",
            "capb",
            "--tls-ca",
            pop.tls.ca.to_str().unwrap(),
            "--tls-cert",
            pop.tls.cert.to_str().unwrap(),
            "--tls-key",
            pop.tls.key.to_str().unwrap(),
            "--spool-dir",
            &path("spool"),
            "--shard-rotate-seconds",
            "2",
        ],
        &dir.path().join("agent.log"),
    );
    let pcap = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/pcaps/DnsPackets.pcap");
    let _traffic = pop.ns.spawn(
        "tcpreplay",
        &["-i", "capa", "--pps=50", "--loop=0", pcap.to_str().unwrap()],
        &dir.path().join("tcpreplay.log"),
    );
    let api = "http://127.0.0.1:9440/client/v4";
    let cli = |args: &[&str]| edgecap_cli(&core, api, TOKEN, args);
    wait_for("the agent to connect", Duration::from_secs(30), || {
        coordinator.assert_running("coordinator");
        agent.assert_running("agent");
        cli(&["agents"]).ok().filter(|v| v.to_string().contains("agent-ord01")).map(|_| ())
    });

    let destination = format!("s3://{BUCKET}/edge?region=us-east-1&endpoint=http://10.213.1.1:{}", s3.port);
    let created = cli(&["ownership", "create", "--destination-conf", &destination]).unwrap();
    let filename = created["filename"].as_str().unwrap();
    let challenge = std::fs::read_to_string(s3.object_path(BUCKET, &format!("edge/{filename}"))).unwrap();
    cli(&["ownership", "validate", "--destination-conf", &destination, "--ownership-challenge", challenge.trim()])
        .unwrap();
    let capture = cli(&[
        "capture",
        "create",
        "--type",
        "full",
        "--colo-name",
        "ord01",
        "--destination-conf",
        &destination,
        "--time-limit",
        "45",
        "--protocol",
        "17",
        "--packet-limit",
        "10000",
    ])
    .unwrap();
    let id = capture["id"].as_str().unwrap().to_string();

    // The partition: the uplink down on both sides for 30 s.
    std::thread::sleep(Duration::from_secs(5));
    let cut = now();
    ip(&["-n", &core.name, "link", "set", &pop.core_veth, "down"]);
    ip(&["-n", &pop.ns.name, "link", "set", &pop.pop_veth, "down"]);
    std::thread::sleep(Duration::from_secs(30));
    ip(&["-n", &core.name, "link", "set", &pop.core_veth, "up"]);
    ip(&["-n", &pop.ns.name, "link", "set", &pop.pop_veth, "up"]);
    let healed = now();
    // The route through the uplink went with the link.
    let _ = Command::new("ip")
        .args(["-n", &pop.ns.name, "route", "replace", "10.213.0.0/16", "via", "10.213.1.1"])
        .status();

    let done = wait_for("the capture to finish after the partition", Duration::from_secs(240), || {
        let v = cli(&["capture", "get", &id]).ok()?;
        matches!(v["status"].as_str(), Some("success" | "failed")).then_some(v)
    });
    assert_eq!(done["status"], "success", "{done}\n{}\n{}", coordinator.log_text(), agent.log_text());
    let pop_result = &done["pops"][0];
    assert_eq!(pop_result["status"], "done", "{done}");
    let written = pop_result["packets"].as_u64().unwrap();
    let key = done["object_key"].as_str().unwrap();
    let packets = tshark_packets(&s3.object_path(BUCKET, &format!("edge/{key}")));
    assert_eq!(packets.len() as u64, written, "every packet the PoP wrote is in the merged file: {done}");
    assert_eq!(done["packets_captured"].as_u64(), Some(written));
    let during = packets.iter().filter(|(t, _)| *t > cut + 2.0 && *t < healed - 2.0).count();
    assert!(during > 500, "the PoP kept capturing while partitioned: {during} packets in the partition");
    assert!(agent.log_text().contains("shard delivered"), "{}", agent.log_text());
}
