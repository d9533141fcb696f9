//! Full captures end to end: a coordinator and an S3-compatible server (s3s-fs, SigV4
//! checked) in a core namespace, three PoPs (`ord01`..`ord03`) in their own namespaces
//! joined to it by veth pairs, each with an agent capturing on its uplink. DNS traffic from
//! the shared captures is replayed into every PoP with tcpreplay. Everything is driven with
//! the `edgecap` CLI from inside the core namespace; the merged file is read from the S3
//! server's directory and checked with tshark.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::time::Duration;

use edgecap_e2e::{
    NetNs, PopNs, Proc, S3Server, bin, core_pki, edgecap_cli, pop_namespaces, replay_dns, require_root, require_tool,
    sweep_stale, tshark_packets, wait_for,
};
use serde_json::Value;

const TOKEN: &str = "e2e-token-0123456789abcdef";
const BUCKET: &str = "captures";

/// Fields drop in order: processes first, then the S3 server, then the namespaces.
struct Fixture {
    traffic: Vec<Proc>,
    agents: Vec<Option<Proc>>,
    coordinator: Option<Proc>,
    s3: S3Server,
    pops: Vec<PopNs>,
    core: NetNs,
    dir: tempfile::TempDir,
    coordinator_args: Vec<String>,
    agent_args: Vec<String>,
}

impl Fixture {
    /// `None` when the test must be skipped (not root or tools missing, outside CI).
    fn new(test: &str, coordinator_args: &[&str]) -> Option<Self> {
        Self::with_agent_args(test, coordinator_args, &[])
    }

    fn with_agent_args(test: &str, coordinator_args: &[&str], agent_args: &[&str]) -> Option<Self> {
        if !require_root(test) || !require_tool(test, "tshark") || !require_tool(test, "tcpreplay") {
            return None;
        }
        sweep_stale();
        let dir = tempfile::tempdir().unwrap();
        let pki = core_pki(dir.path(), 3);
        let core = NetNs::new("core");
        let s3 = S3Server::launch_in(test, &core)?;
        s3.create_bucket(BUCKET);
        let pops = pop_namespaces(&core, &pki, 3);
        s3.write_credentials(&dir.path().join("s3-credentials.json"), BUCKET);
        let coordinator_args = coordinator_args.iter().map(|s| s.to_string()).collect();
        let agent_args = agent_args.iter().map(|s| s.to_string()).collect();
        let mut fixture = Fixture {
            traffic: vec![],
            agents: vec![],
            coordinator: None,
            s3,
            pops,
            core,
            dir,
            coordinator_args,
            agent_args,
        };
        fixture.coordinator = Some(fixture.start_coordinator("coordinator.log"));
        for i in 0..3 {
            let agent = fixture.start_agent(i, "agent");
            fixture.agents.push(Some(agent));
        }
        fixture.wait_agents(3);
        Some(fixture)
    }

    fn start_agent(&self, i: usize, log: &str) -> Proc {
        let pop = &self.pops[i];
        let spool = self.dir.path().join(format!("spool-{}", pop.name));
        let coordinator = format!("https://10.213.{}.1:7443", i + 1);
        let mut args = vec![
            "run",
            "--coordinator",
            &coordinator,
            "--iface",
            &pop.pop_veth,
            "--tls-ca",
            pop.tls.ca.to_str().unwrap(),
            "--tls-cert",
            pop.tls.cert.to_str().unwrap(),
            "--tls-key",
            pop.tls.key.to_str().unwrap(),
            "--spool-dir",
            spool.to_str().unwrap(),
            "--shard-rotate-seconds",
            "2",
        ];
        args.extend(self.agent_args.iter().map(String::as_str));
        pop.ns.spawn(bin("edgecap-agent"), &args, &self.dir.path().join(format!("{log}-{}.log", pop.name)))
    }

    fn start_coordinator(&self, log: &str) -> Proc {
        let pki = self.dir.path().join("pki");
        let creds = self.dir.path().join("s3-credentials.json");
        let data = self.dir.path().join("coord");
        let token = format!("acct:{TOKEN}");
        let mut args = vec![
            "--data-dir",
            data.to_str().unwrap(),
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
            creds.to_str().unwrap(),
        ];
        args.extend(self.coordinator_args.iter().map(String::as_str));
        self.core.spawn(bin("edgecap-coordinator"), &args, &self.dir.path().join(log))
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if (name.starts_with("agent") || name.starts_with("coordinator")) && name.ends_with(".log") {
                out.push_str(&format!("\n--- {name}\n{}", std::fs::read_to_string(entry.path()).unwrap_or_default()));
            }
        }
        out
    }

    fn cli(&self, args: &[&str]) -> Result<Value, String> {
        edgecap_cli(&self.core, "http://127.0.0.1:9440/client/v4", TOKEN, args)
    }

    fn wait_agents(&mut self, n: usize) {
        wait_for("agents to connect", Duration::from_secs(30), || {
            if let Some(c) = self.coordinator.as_mut() {
                c.assert_running("coordinator");
            }
            self.cli(&["agents"]).ok().filter(|v| v.as_array().is_some_and(|a| a.len() == n))
        });
    }

    fn destination(&self) -> String {
        format!("s3://{BUCKET}/edge?region=us-east-1&endpoint=http://10.213.1.1:{}", self.s3.port)
    }

    /// Proves the bucket is ours: create, read the challenge file, validate.
    fn validate_bucket(&self) {
        let dest = self.destination();
        let created = self.cli(&["ownership", "create", "--destination-conf", &dest]).unwrap();
        let filename = created["filename"].as_str().unwrap();
        let text = std::fs::read_to_string(self.s3.object_path(BUCKET, &format!("edge/{filename}"))).unwrap();
        let ok = self
            .cli(&["ownership", "validate", "--destination-conf", &dest, "--ownership-challenge", text.trim()])
            .unwrap();
        assert_eq!(ok["status"], "success", "{ok:#}");
    }

    /// Replays the DNS capture into every PoP's uplink, in a loop, at `pps` per PoP.
    fn start_traffic(&mut self, pps: u32) {
        self.traffic.extend(replay_dns(&self.core, &self.pops, pps, self.dir.path()));
    }

    fn create_full(&self, extra: &[&str]) -> Value {
        let dest = self.destination();
        let mut args = vec![
            "capture",
            "create",
            "--type",
            "full",
            "--colo-name",
            "ord",
            "--destination-conf",
            &dest,
            "--protocol",
            "17",
        ];
        args.extend_from_slice(extra);
        self.cli(&args).unwrap_or_else(|e| panic!("create: {e}\n{}", self.logs()))
    }

    fn wait_final(&self, id: &str, secs: u64) -> Value {
        self.cli(&["capture", "wait", id, "--timeout", &secs.to_string()])
            .unwrap_or_else(|e| panic!("wait: {e}\n{}", self.logs()))
    }

    /// The merged file in the bucket: its packets (tshark) in time order, shards gone.
    fn check_merged(&self, capture: &Value) -> usize {
        let id = capture["id"].as_str().unwrap();
        let key = capture["object_key"].as_str().unwrap_or_else(|| panic!("object_key: {capture:#}"));
        let merged = self.s3.object_path(BUCKET, &format!("edge/{key}"));
        assert!(merged.exists(), "merged object in the bucket: {capture:#}\n{}", self.logs());
        let packets = tshark_packets(&merged);
        assert!(packets.windows(2).all(|w| w[0].0 <= w[1].0), "merged file in timestamp order");
        assert_eq!(capture["packets_captured"].as_u64().unwrap() as usize, packets.len(), "{capture:#}");
        assert!(
            self.s3.keys(BUCKET, &format!("edge/edgecap-shards/{id}")).is_empty(),
            "shards removed after the merge"
        );
        packets.len()
    }
}

fn pops(capture: &Value) -> Vec<Value> {
    capture["pops"].as_array().cloned().unwrap_or_default()
}

fn delivered(pop: &Value) -> u64 {
    pop["shards"].as_array().map(|s| s.iter().map(|s| s["packets"].as_u64().unwrap()).sum()).unwrap_or(0)
}

#[test]
fn full_capture_ownership_then_packet_and_byte_limits_across_three_pops() {
    let Some(mut f) = Fixture::new("full_capture_ownership_then_packet_and_byte_limits_across_three_pops", &[]) else {
        return;
    };
    f.start_traffic(300);

    // Not validated yet: refused, naming the field.
    let dest = f.destination();
    let err = f
        .cli(&[
            "capture",
            "create",
            "--type",
            "full",
            "--colo-name",
            "ord",
            "--destination-conf",
            &dest,
            "--time-limit",
            "5",
        ])
        .unwrap_err();
    assert!(err.contains("1106") && err.contains("destination_conf"), "{err}");
    // A wrong challenge text is refused; the right one validates.
    let created = f.cli(&["ownership", "create", "--destination-conf", &dest]).unwrap();
    assert_eq!(created["status"], "pending");
    let filename = created["filename"].as_str().unwrap().to_string();
    assert!(filename.starts_with("ownership-challenge-") && filename.ends_with(".txt"), "{created:#}");
    let wrong =
        f.cli(&["ownership", "validate", "--destination-conf", &dest, "--ownership-challenge", "not-it"]).unwrap_err();
    assert!(wrong.contains("ownership_challenge"), "{wrong}");
    let text = std::fs::read_to_string(f.s3.object_path(BUCKET, &format!("edge/{filename}"))).unwrap();
    let ok =
        f.cli(&["ownership", "validate", "--destination-conf", &dest, "--ownership-challenge", text.trim()]).unwrap();
    assert_eq!(ok["status"], "success", "{ok:#}");
    assert!(ok["validated"].is_string());
    assert!(!ok.to_string().contains(text.trim()), "the secret is never returned");

    // Packet limit: a budget for the merged file shared by the three PoPs (all busy): exactly
    // 100 packets in all, each PoP ending when the budget is spent.
    let capture = f.create_full(&["--time-limit", "60", "--packet-limit", "100"]);
    assert_eq!(capture["type"], "full");
    let capture = f.wait_final(capture["id"].as_str().unwrap(), 120);
    assert_eq!(capture["status"], "success", "{capture:#}\n{}", f.logs());
    let by_pop = pops(&capture);
    assert_eq!(by_pop.len(), 3, "colo `ord` covers ord01..ord03: {capture:#}");
    let mut total = 0;
    for pop in &by_pop {
        assert_eq!(pop["status"], "done", "{pop:#}");
        assert_eq!(pop["stop_reason"], "budget", "{pop:#}");
        // When it began running there, after the request (one clock here; RFC 3339 with
        // microseconds and `Z` on both sides, so their text orders as their times).
        let (started, submitted) = (pop["started_at"].as_str().unwrap(), capture["submitted"].as_str().unwrap());
        assert!(started.len() == submitted.len() && started > submitted, "{pop:#}\n{capture:#}");
        let packets = pop["packets"].as_u64().unwrap();
        assert!(packets > 0, "{pop:#}");
        assert_eq!(delivered(pop), packets, "every written packet delivered: {pop:#}");
        total += packets;
    }
    assert_eq!(total, 100, "{capture:#}");
    assert_eq!(f.check_merged(&capture), 100);

    // Byte limit: the PoPs' packet bytes together stop before they would pass 20 000 (each
    // PoP leaves at most the packet that did not fit its share). The merged file is pcapng
    // this time: one interface per PoP (however many shards it sent), named after it.
    let capture = f.create_full(&[
        "--time-limit",
        "60",
        "--packet-limit",
        "10000",
        "--byte-limit",
        "20000",
        "--output-format",
        "pcapng",
    ]);
    let capture = f.wait_final(capture["id"].as_str().unwrap(), 120);
    assert_eq!(capture["status"], "success", "{capture:#}\n{}", f.logs());
    let (mut total, mut bytes) = (0, 0);
    for pop in pops(&capture) {
        assert_eq!(pop["stop_reason"], "budget", "{pop:#}");
        bytes += pop["bytes"].as_u64().unwrap();
        assert_eq!(delivered(&pop), pop["packets"].as_u64().unwrap(), "{pop:#}");
        total += pop["packets"].as_u64().unwrap() as usize;
    }
    assert!(bytes <= 20_000 && bytes > 20_000 - 3 * 1514, "{bytes} bytes: {capture:#}");
    assert_eq!(f.check_merged(&capture), total);
    let key = capture["object_key"].as_str().unwrap();
    assert!(key.ends_with(".pcapng"), "{key}");
    let out = std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(f.s3.object_path(BUCKET, &format!("edge/{key}")))
        .args(["-T", "fields", "-e", "frame.interface_name"])
        .output()
        .unwrap();
    let mut per_iface: std::collections::BTreeMap<String, u64> = Default::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        *per_iface.entry(line.to_string()).or_default() += 1;
    }
    let expected: std::collections::BTreeMap<String, u64> = pops(&capture)
        .iter()
        .map(|p| {
            let name = p["pop"].as_str().unwrap();
            let iface = &f.pops.iter().find(|x| x.name == name).unwrap().pop_veth;
            (format!("{name}/agent-{name}/{iface}"), p["packets"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(per_iface, expected, "provenance: each packet names its PoP, agent and interface");
}

#[test]
fn full_capture_loses_nothing_when_s3_is_down_for_20_seconds() {
    let Some(mut f) = Fixture::new("full_capture_loses_nothing_when_s3_is_down_for_20_seconds", &[]) else { return };
    f.validate_bucket();
    f.start_traffic(100);
    let capture = f.create_full(&["--time-limit", "30", "--packet-limit", "10000"]);
    let id = capture["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(4));
    f.s3.stop();
    std::thread::sleep(Duration::from_secs(20));
    // Meanwhile the capture went on and its shards waited in the agents' spools.
    let during = f.cli(&["capture", "get", &id]).unwrap();
    assert_eq!(during["status"], "running", "{during:#}");
    f.s3.start();
    let capture = f.wait_final(&id, 180);
    assert_eq!(capture["status"], "success", "{capture:#}\n{}", f.logs());
    let mut written = 0;
    for pop in pops(&capture) {
        assert_eq!(pop["status"], "done", "{pop:#}");
        assert_eq!(pop["stop_reason"], "time_limit", "{pop:#}");
        let n = pop["packets"].as_u64().unwrap();
        assert!(n > 1000, "traffic all along: {pop:#}");
        assert_eq!(delivered(&pop), n, "no packet lost to the outage: {pop:#}");
        written += n as usize;
    }
    assert_eq!(f.check_merged(&capture), written, "merged count equals the agents' written counts");
    assert!(f.logs().contains("shard upload failed; kept in the spool"), "the outage was felt by the agents");
}

#[test]
fn full_capture_with_an_agent_killed_and_a_stop() {
    let Some(mut f) = Fixture::new("full_capture_with_an_agent_killed_and_a_stop", &["--reconnect-grace", "3"]) else {
        return;
    };
    f.validate_bucket();
    f.start_traffic(200);

    // An agent dies mid-capture: its PoP is named as failed; the others are complete.
    let capture = f.create_full(&["--time-limit", "12", "--packet-limit", "10000"]);
    let id = capture["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(5));
    f.agents[2] = None; // SIGKILL
    let capture = f.wait_final(&id, 120);
    assert_eq!(capture["status"], "success", "{capture:#}\n{}", f.logs());
    let error = capture["error_message"].as_str().unwrap_or("");
    assert!(error.contains("ord03") && error.contains("disconnected"), "{capture:#}");
    let mut in_file = 0;
    for pop in pops(&capture) {
        if pop["pop"] == "ord03" {
            assert_eq!(pop["status"], "failed", "{pop:#}");
        } else {
            assert_eq!(pop["status"], "done", "{pop:#}");
            assert_eq!(delivered(&pop), pop["packets"].as_u64().unwrap(), "all of {}'s packets: {pop:#}", pop["pop"]);
            assert!(pop["packets"].as_u64().unwrap() > 1000, "{pop:#}");
        }
        in_file += delivered(&pop) as usize;
    }
    assert_eq!(f.check_merged(&capture), in_file, "the merged file holds every delivered shard");

    // The agent comes back (same spool): it reports the interrupted capture and is usable.
    f.agents[2] = Some(f.start_agent(2, "agent-restarted"));
    f.wait_agents(3);

    // Stop in the middle: every PoP ends with reason `stopped`, what was captured is kept.
    let capture = f.create_full(&["--time-limit", "120", "--packet-limit", "10000"]);
    let id = capture["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(4));
    f.cli(&["capture", "stop", &id]).unwrap();
    let capture = f.wait_final(&id, 60);
    assert_eq!(capture["status"], "success", "{capture:#}\n{}", f.logs());
    assert!(capture["stop_requested"].is_string(), "{capture:#}");
    let mut total = 0;
    for pop in pops(&capture) {
        assert_eq!(pop["status"], "done", "{pop:#}");
        assert_eq!(pop["stop_reason"], "stopped", "{pop:#}");
        let n = pop["packets"].as_u64().unwrap();
        assert!(n > 100, "{pop:#}");
        assert_eq!(delivered(&pop), n);
        total += n as usize;
    }
    assert_eq!(f.check_merged(&capture), total);
}

#[test]
fn full_capture_survives_agent_and_coordinator_restarts() {
    let Some(mut f) = Fixture::new("full_capture_survives_agent_and_coordinator_restarts", &[]) else { return };
    f.validate_bucket();
    f.start_traffic(100);
    let capture = f.create_full(&["--time-limit", "20", "--packet-limit", "10000"]);
    let id = capture["id"].as_str().unwrap().to_string();
    // S3 down first, so closed shards pile up in the agents' spools ...
    std::thread::sleep(Duration::from_secs(2));
    f.s3.stop();
    std::thread::sleep(Duration::from_secs(5));
    // ... then ord01's agent dies and comes back on the same spool, and the coordinator
    // restarts. Neither loses what was accepted.
    f.agents[0] = None;
    f.agents[0] = Some(f.start_agent(0, "agent-restarted"));
    f.coordinator = None;
    f.coordinator = Some(f.start_coordinator("coordinator-restarted.log"));
    f.wait_agents(3);
    f.s3.start();
    let capture = f.wait_final(&id, 180);
    assert_eq!(capture["status"], "success", "{capture:#}\n{}", f.logs());
    let mut in_file = 0;
    for pop in pops(&capture) {
        let delivered = delivered(&pop);
        if pop["pop"] == "ord01" {
            // Cut short by the restart: named as failed, and the shards it completed before
            // the restart were delivered from the spool afterwards.
            assert_eq!(pop["status"], "failed", "{pop:#}");
            assert!(pop["error"].as_str().unwrap().contains("restarted"), "{pop:#}");
            assert!(delivered > 200, "spooled shards delivered after the restart: {pop:#}");
        } else {
            assert_eq!(pop["status"], "done", "{pop:#}");
            assert_eq!(pop["stop_reason"], "time_limit", "{pop:#}");
            assert_eq!(delivered, pop["packets"].as_u64().unwrap(), "nothing lost to the coordinator restart: {pop:#}");
            assert!(delivered > 1000, "{pop:#}");
        }
        in_file += delivered as usize;
    }
    assert_eq!(f.check_merged(&capture), in_file);
}

#[test]
fn full_capture_stops_on_a_full_spool_and_still_delivers_it() {
    let test = "full_capture_stops_on_a_full_spool_and_still_delivers_it";
    let Some(mut f) = Fixture::with_agent_args(test, &[], &["--spool-max-mib", "1"]) else { return };
    f.validate_bucket();
    // Nothing can leave the agents, so their 1 MiB spools fill (~7 400 DNS packets each).
    f.s3.stop();
    f.start_traffic(1000);
    // Through the API without a packet limit (the CLI always sends one, at most 10 000: a
    // budget the three spools would outgrow together, ending the capture before they fill).
    let url = "http://127.0.0.1:9440/client/v4/accounts/acct/pcaps";
    let body = serde_json::json!({"system": "magic-transit", "type": "full", "time_limit": 60, "colo_name": "ord",
        "destination_conf": f.destination(), "filter_v1": {"protocol": 17}});
    let (status, created) = edgecap_e2e::api_in(&f.core, "POST", url, TOKEN, Some(&body));
    assert_eq!(status, 200, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();
    wait_for("every PoP to stop on its full spool", Duration::from_secs(60), || {
        let c = f.cli(&["capture", "get", &id]).ok()?;
        pops(&c).iter().all(|p| p["stop_reason"] == "spool_full").then_some(())
    });
    f.s3.start();
    let capture = f.wait_final(&id, 120);
    assert_eq!(capture["status"], "success", "{capture:#}\n{}", f.logs());
    let mut total = 0;
    for pop in pops(&capture) {
        // Stopped early, and said so; everything it wrote was still delivered.
        assert_eq!(pop["status"], "failed", "{pop:#}");
        assert!(pop["error"].as_str().unwrap().contains("spool full"), "{pop:#}");
        let n = pop["packets"].as_u64().unwrap();
        assert!(n > 3000 && n < 10_000, "{pop:#}");
        assert_eq!(delivered(&pop), n, "{pop:#}");
        total += n as usize;
    }
    assert_eq!(f.check_merged(&capture), total);
}

/// Extensions: several colos in one full capture (`colo_names`), with clear errors for an
/// unknown or empty one, and a dry run that starts nothing but says which PoPs would capture
/// and how fast matching traffic arrives there.
#[test]
fn several_colos_in_one_capture_and_a_dry_run_first() {
    let Some(mut f) = Fixture::new("several_colos_in_one_capture_and_a_dry_run_first", &[]) else { return };
    f.validate_bucket();
    f.start_traffic(100);
    std::thread::sleep(Duration::from_secs(3));
    let url = "http://127.0.0.1:9440/client/v4/accounts/acct/pcaps";
    let call = |body: serde_json::Value| edgecap_e2e::api_in(&f.core, "POST", url, TOKEN, Some(&body));
    let full = |extra: serde_json::Value| {
        let mut body = serde_json::json!({"system": "magic-transit", "type": "full", "time_limit": 4,
            "destination_conf": f.destination(), "filter_v1": {"protocol": 17}});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    // Bad colo lists: named by field.
    let (status, v) = call(full(serde_json::json!({"colo_names": []})));
    assert_eq!(status, 400, "{v}");
    assert!(v["errors"][0]["message"].as_str().unwrap().starts_with("colo_names"), "{v}");
    let (status, v) = call(full(serde_json::json!({"colo_names": ["ord01", "fra09"]})));
    assert_eq!(status, 422, "{v}");
    assert!(v["errors"][0]["message"].as_str().unwrap().starts_with("colo_names[1]"), "{v}");

    // A dry run: the two PoPs, their matching traffic, nothing started.
    let (status, dry) =
        call(full(serde_json::json!({"colo_names": ["ord01", "ord03"], "dry_run": true, "packet_limit": 10000})));
    assert_eq!(status, 200, "{dry}");
    let pops: Vec<&str> =
        dry["result"]["pops"].as_array().unwrap().iter().map(|p| p["pop"].as_str().unwrap()).collect();
    assert_eq!(pops, ["ord01", "ord03"], "{dry}");
    assert!(dry["result"]["matching_pps"].as_f64().unwrap() > 20.0, "{dry}");
    assert!(dry["result"]["estimated_seconds_to_packet_limit"].as_f64().unwrap() > 0.0, "{dry}");
    assert_eq!(f.cli(&["capture", "list"]).unwrap().as_array().unwrap().len(), 0, "a dry run starts nothing");

    // The real one: both colos merged into one file, the PoP in between left out.
    let (status, created) = call(full(serde_json::json!({"colo_names": ["ord01", "ord03"]})));
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["result"]["colo_names"], serde_json::json!(["ord01", "ord03"]));
    let done = f.wait_final(created["result"]["id"].as_str().unwrap(), 120);
    assert_eq!(done["status"], "success", "{done:#}\n{}", f.logs());
    let captured: Vec<&str> = pops_of(&done);
    assert_eq!(captured, ["ord01", "ord03"], "{done:#}");
    assert_eq!(f.check_merged(&done) as u64, done["packets_captured"].as_u64().unwrap());
}

fn pops_of(capture: &Value) -> Vec<&str> {
    capture["pops"].as_array().unwrap().iter().map(|p| p["pop"].as_str().unwrap()).collect()
}
