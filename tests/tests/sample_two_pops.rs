//! Coordinator plus two agents, each PoP in its own network namespace, joined to the
//! coordinator's namespace by veth pairs. Real traffic (ping) crosses both PoPs; a sample
//! capture's PCAP must hold packets from both, in timestamp order, and read cleanly in tshark.
//! The test drives everything through the CLI from inside the coordinator's namespace, so
//! no traffic leaves the namespaces it made.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::time::Duration;

use edgecap_e2e::{NetNs, bin, require_root, require_tool, sweep_stale, tshark_packets, veth, wait_for};
use serde_json::Value;

const TOKEN: &str = "e2e-token-0123456789abcdef";

struct Cli<'a> {
    ns: &'a NetNs,
    api: String,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Result<Value, String> {
        edgecap_e2e::edgecap_cli(self.ns, &self.api, TOKEN, args)
    }
}

#[test]
fn sample_capture_merges_two_pops_in_time_order() {
    if !require_root("sample_capture_merges_two_pops_in_time_order")
        || !require_tool("sample_capture_merges_two_pops_in_time_order", "tshark")
        || !require_tool("sample_capture_merges_two_pops_in_time_order", "ping")
    {
        return;
    }
    sweep_stale();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "e2e").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "core", &["10.213.1.1".into(), "10.213.2.1".into()]).unwrap();
    let a = edgecap_tls::pki::issue_agent(&pki, "agent-a", "pop-a").unwrap();
    let b = edgecap_tls::pki::issue_agent(&pki, "agent-b", "pop-b").unwrap();

    let core = NetNs::new("core");
    let pop_a = NetNs::new("popa");
    let pop_b = NetNs::new("popb");
    let (_, veth_a) = veth(&core, "10.213.1.1/30", &pop_a, "10.213.1.2/30");
    let (_, veth_b) = veth(&core, "10.213.2.1/30", &pop_b, "10.213.2.2/30");

    let coord_dir = dir.path().join("coord");
    let pki_s = pki.to_str().unwrap();
    let token_arg = format!("acct:{TOKEN}");
    let start_coordinator = |log: &str| {
        core.spawn(
            bin("edgecap-coordinator"),
            &[
                "--data-dir",
                coord_dir.to_str().unwrap(),
                "--pki-dir",
                pki_s,
                "--api-listen",
                "127.0.0.1:9440",
                "--grpc-listen",
                "0.0.0.0:7443",
                "--token",
                &token_arg,
                "--no-rate-limits",
                "--unscoped-accounts",
                "unrestricted",
            ],
            &dir.path().join(log),
        )
    };
    let mut coordinator = start_coordinator("coordinator.log");
    let agent = |ns: &NetNs, files: &edgecap_tls::TlsFiles, iface: &str, coord: &str, log: &str| {
        // Each agent its own spool, never the host's /var/lib/edgecap.
        let spool = dir.path().join(format!("spool-{log}"));
        ns.spawn(
            bin("edgecap-agent"),
            &[
                "run",
                "--coordinator",
                coord,
                "--iface",
                iface,
                "--tls-ca",
                files.ca.to_str().unwrap(),
                "--tls-cert",
                files.cert.to_str().unwrap(),
                "--tls-key",
                files.key.to_str().unwrap(),
                "--spool-dir",
                spool.to_str().unwrap(),
            ],
            &dir.path().join(log),
        )
    };
    let mut agent_a = agent(&pop_a, &a, &veth_a, "https://10.213.1.1:7443", "agent-a.log");
    let mut agent_b = agent(&pop_b, &b, &veth_b, "https://10.213.2.1:7443", "agent-b.log");

    let cli = Cli { ns: &core, api: "http://127.0.0.1:9440/client/v4".into() };
    let agents = wait_for("both agents to connect", Duration::from_secs(30), || {
        coordinator.assert_running("coordinator");
        agent_a.assert_running("agent a");
        agent_b.assert_running("agent b");
        cli.run(&["agents"]).ok().filter(|v| v.as_array().is_some_and(|a| a.len() == 2))
    });
    let pops: Vec<&str> = agents.as_array().unwrap().iter().map(|a| a["pop"].as_str().unwrap()).collect();
    assert_eq!(pops, ["pop-a", "pop-b"]);

    // Real traffic through both PoPs at once, so their packets interleave in time.
    let pings: Vec<_> = ["10.213.1.2", "10.213.2.2"]
        .iter()
        .map(|ip| {
            core.cmd("ping")
                .args(["-c", "5", "-i", "0.2", "-W", "1", ip])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in pings {
        let p = p.wait_with_output().unwrap();
        assert!(p.status.success(), "ping: {}", String::from_utf8_lossy(&p.stdout));
    }

    let capture = cli
        .run(&["capture", "create", "--time-limit", "60", "--packet-limit", "1000", "--protocol", "1", "--wait"])
        .unwrap_or_else(|e| panic!("create: {e}\ncoordinator:\n{}", coordinator.log_text()));
    assert_eq!(capture["status"], "success", "{capture:#}");
    assert_eq!(capture["packets_captured"], 20, "5 requests + 5 replies per PoP: {capture:#}");
    let by_pop: Vec<(String, u64)> = capture["pops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["pop"].as_str().unwrap().to_string(), p["packets"].as_u64().unwrap()))
        .collect();
    assert_eq!(by_pop, [("pop-a".to_string(), 10), ("pop-b".to_string(), 10)], "{capture:#}");

    let id = capture["id"].as_str().unwrap();
    let file = dir.path().join("sample.pcap");
    cli.run(&["capture", "download", id, "-o", file.to_str().unwrap()]).unwrap();
    let packets = tshark_packets(&file);
    assert_eq!(packets.len(), 20);
    assert!(packets.windows(2).all(|w| w[0].0 <= w[1].0), "timestamp order: {packets:?}");
    let from_a = packets.iter().filter(|p| p.1.starts_with("10.213.1.")).count();
    let from_b = packets.iter().filter(|p| p.1.starts_with("10.213.2.")).count();
    assert_eq!((from_a, from_b), (10, 10), "{packets:?}");
    // The two PoPs' packets interleave: not one PoP's block after the other's.
    let switches = packets.windows(2).filter(|w| w[0].1[..9] != w[1].1[..9]).count();
    assert!(switches > 1, "PoPs interleave in the merged file ({switches} switches)");

    // A filter that matches nothing fails the capture with Cloudflare's message.
    let none = cli
        .run(&[
            "capture",
            "create",
            "--time-limit",
            "60",
            "--packet-limit",
            "10",
            "--protocol",
            "17",
            "--destination-port",
            "9",
            "--wait",
        ])
        .unwrap();
    assert_eq!(none["status"], "failed");
    assert!(none["error_message"].as_str().unwrap().starts_with("No packets matched"), "{none:#}");

    // The coordinator restarts: both agents reconnect by themselves (backoff), and the
    // captures taken before the restart are still there.
    drop(coordinator);
    let mut coordinator = start_coordinator("coordinator-2.log");
    wait_for("both agents to reconnect", Duration::from_secs(60), || {
        coordinator.assert_running("restarted coordinator");
        cli.run(&["agents"]).ok().filter(|v| v.as_array().is_some_and(|a| a.len() == 2))
    });
    let kept = cli.run(&["capture", "get", id]).unwrap();
    assert_eq!(kept["status"], "success");
    assert_eq!(kept["packets_captured"], 20);
    let again = dir.path().join("again.pcap");
    cli.run(&["capture", "download", id, "-o", again.to_str().unwrap()]).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&file).unwrap(), "same file after the restart");

    // One PoP gone: the other still answers; the lost PoP is not silently counted.
    drop(agent_b);
    wait_for("agent b to be gone", Duration::from_secs(30), || {
        cli.run(&["agents"]).ok().filter(|v| v.as_array().is_some_and(|a| a.len() == 1))
    });
    let one = cli
        .run(&["capture", "create", "--time-limit", "60", "--packet-limit", "1000", "--protocol", "1", "--wait"])
        .unwrap();
    assert_eq!(one["status"], "success");
    assert_eq!(one["packets_captured"], 10);
    assert_eq!(one["pops"].as_array().unwrap().len(), 1);
}
