//! Three coordinator replicas sharing one real etcd, in a core namespace with an
//! S3-compatible server; three PoPs (`ord01..03`) in their own namespaces, agent `i` dialling
//! coordinator `i` first (and the others after it). DNS traffic is replayed into every PoP.
//!
//! Checked: any replica serves the API for agents connected to others, and a sample capture
//! reads the lookback of agents connected to other replicas; killing the leader,
//! which is also the coordinator an agent is connected to, in the middle of a full capture:
//! the capture completes with nothing lost; restarting etcd in the middle of a capture: it
//! completes; killing an agent: its PoP is reported lost and the others are complete; and
//! each capture is merged exactly once, by one leader.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::path::PathBuf;
use std::time::Duration;

use edgecap_e2e::{
    EtcdServer, NetNs, PopNs, Proc, S3Server, bin, core_pki, edgecap_cli, pop_namespaces, replay_dns, require_root,
    require_tool, sweep_stale, wait_for,
};
use serde_json::Value;

const TOKEN: &str = "e2e-token-0123456789abcdef";
const BUCKET: &str = "captures";

/// Processes first, so they are killed before the namespaces go.
struct Cluster {
    traffic: Vec<Proc>,
    agents: Vec<Option<Proc>>,
    coordinators: Vec<Option<Proc>>,
    s3: S3Server,
    etcd: EtcdServer,
    pops: Vec<PopNs>,
    core: NetNs,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new(test: &str) -> Option<Self> {
        if !require_root(test) || !require_tool(test, "tshark") || !require_tool(test, "tcpreplay") {
            return None;
        }
        sweep_stale();
        let dir = tempfile::tempdir().unwrap();
        let pki = core_pki(dir.path(), 3);
        let core = NetNs::new("core");
        let etcd = EtcdServer::launch_in(test, &core)?;
        let s3 = S3Server::launch_in(test, &core)?;
        s3.create_bucket(BUCKET);
        s3.write_credentials(&dir.path().join("s3.json"), BUCKET);
        let pops = pop_namespaces(&core, &pki, 3);
        let mut cluster = Cluster { traffic: vec![], agents: vec![], coordinators: vec![], s3, etcd, pops, core, dir };
        for i in 0..3 {
            let c = cluster.start_coordinator(i);
            cluster.coordinators.push(Some(c));
        }
        // Every replica listens before the agents dial, so each agent gets its first choice.
        for i in 0..3 {
            edgecap_e2e::wait_port_in(&cluster.core.name, &format!("127.0.0.1:{}", 7441 + i), "coordinator to listen");
        }
        for i in 0..3 {
            let a = cluster.start_agent(i);
            cluster.agents.push(Some(a));
        }
        cluster.wait_agents(0, 3);
        Some(cluster)
    }

    fn start_coordinator(&self, i: usize) -> Proc {
        let pki = self.dir.path().join("pki");
        let data = self.dir.path().join(format!("coord{i}"));
        let creds = self.dir.path().join("s3.json");
        let state = format!("etcd://{}/e2e", self.etcd.client);
        let api = format!("127.0.0.1:{}", 9441 + i);
        let grpc = format!("0.0.0.0:{}", 7441 + i);
        let token = format!("acct:{TOKEN}");
        let name = format!("c{}", i + 1);
        // Sample files in the shared bucket, so any replica serves any download.
        let objects = format!("s3://{BUCKET}/samples?region=us-east-1&endpoint=http://10.213.1.1:{}", self.s3.port);
        self.core.spawn(
            bin("edgecap-coordinator"),
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--pki-dir",
                pki.to_str().unwrap(),
                "--state",
                &state,
                "--api-listen",
                &api,
                "--grpc-listen",
                &grpc,
                "--token",
                &token,
                "--no-rate-limits",
                "--unscoped-accounts",
                "unrestricted",
                "--allow-private-endpoints",
                "--s3-credentials",
                creds.to_str().unwrap(),
                "--name",
                &name,
                "--reconnect-grace",
                "4",
                "--objects",
                &objects,
            ],
            &self.dir.path().join(format!("coordinator-{name}-{}.log", unique_suffix())),
        )
    }

    /// Agent `i` dials coordinator `i` first, then the others in turn.
    fn start_agent(&self, i: usize) -> Proc {
        let pop = &self.pops[i];
        let endpoints: Vec<String> =
            (0..3).map(|k| (i + k) % 3).map(|c| format!("https://10.213.{}.1:{}", i + 1, 7441 + c)).collect();
        let spool = self.dir.path().join(format!("spool-{}", pop.name));
        pop.ns.spawn(
            bin("edgecap-agent"),
            &[
                "run",
                "--coordinator",
                &endpoints.join(","),
                "--coordinator-order",
                "listed",
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
            ],
            &self.dir.path().join(format!("agent-{}-{}.log", pop.name, unique_suffix())),
        )
    }

    fn logs(&self, prefix: &str) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| format!("--- {}\n{}", p.display(), std::fs::read_to_string(p).unwrap_or_default()))
            .collect()
    }

    fn all_logs(&self) -> String {
        format!("{}{}", self.logs("coordinator"), self.logs("agent"))
    }

    /// The CLI against coordinator `c`'s API.
    fn cli(&self, c: usize, args: &[&str]) -> Result<Value, String> {
        edgecap_cli(&self.core, &format!("http://127.0.0.1:{}/client/v4", 9441 + c), TOKEN, args)
    }

    fn wait_agents(&mut self, c: usize, n: usize) -> Value {
        wait_for("agents to be present", Duration::from_secs(60), || {
            for c in self.coordinators.iter_mut().flatten() {
                c.assert_running("coordinator");
            }
            self.cli(c, &["agents"]).ok().filter(|v| v.as_array().is_some_and(|a| a.len() == n))
        })
    }

    fn destination(&self) -> String {
        format!("s3://{BUCKET}/edge?region=us-east-1&endpoint=http://10.213.1.1:{}", self.s3.port)
    }

    fn start_traffic(&mut self, pps: u32) {
        self.traffic.extend(replay_dns(&self.core, &self.pops, pps, self.dir.path()));
    }

    fn create_full(&self, c: usize, time_limit: u64) -> String {
        let dest = self.destination();
        let t = time_limit.to_string();
        let v = self
            .cli(
                c,
                &[
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
                    "--time-limit",
                    &t,
                    "--packet-limit",
                    "10000",
                ],
            )
            .unwrap_or_else(|e| panic!("create: {e}\n{}", self.all_logs()));
        v["id"].as_str().unwrap().to_string()
    }

    fn wait_final(&self, c: usize, id: &str) -> Value {
        self.cli(c, &["capture", "wait", id, "--timeout", "180"])
            .unwrap_or_else(|e| panic!("wait: {e}\n{}", self.all_logs()))
    }

    /// The replica that says it is the leader now (from its log: the last election line).
    fn leader(&self) -> usize {
        wait_for("a leader", Duration::from_secs(30), || {
            let mut best: Option<(String, usize)> = None;
            for i in 0..3 {
                if self.coordinators[i].is_none() {
                    continue;
                }
                let log = self.logs(&format!("coordinator-c{}-", i + 1));
                let elected = log.lines().rfind(|l| l.contains("elected leader")).map(str::to_string);
                let stepped_down = log.lines().rfind(|l| l.contains("no longer leader")).map(str::to_string);
                if let Some(e) = elected
                    && stepped_down.as_ref().is_none_or(|s| s < &e)
                {
                    // Log lines start with an RFC 3339 time: the latest election wins.
                    if best.as_ref().is_none_or(|(t, _)| &e > t) {
                        best = Some((e, i));
                    }
                }
            }
            best.map(|(_, i)| i)
        })
    }

    /// Merge lines for a capture across every replica's logs.
    fn merges(&self, id: &str) -> usize {
        self.logs("coordinator").lines().filter(|l| l.contains("merged into the bucket") && l.contains(id)).count()
    }
}

fn unique_suffix() -> String {
    format!("{:?}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

fn pops(capture: &Value) -> Vec<Value> {
    capture["pops"].as_array().cloned().unwrap_or_default()
}

fn delivered(pop: &Value) -> u64 {
    pop["shards"].as_array().map(|s| s.iter().map(|s| s["packets"].as_u64().unwrap()).sum()).unwrap_or(0)
}

/// Every PoP done, everything written delivered, the merged object holding all of it.
fn assert_complete(cluster: &Cluster, capture: &Value) {
    assert_eq!(capture["status"], "success", "{capture:#}\n{}", cluster.all_logs());
    let mut total = 0;
    for pop in pops(capture) {
        assert_eq!(pop["status"], "done", "{pop:#}\n{}", cluster.all_logs());
        assert_eq!(delivered(&pop), pop["packets"].as_u64().unwrap(), "{pop:#}");
        assert!(pop["packets"].as_u64().unwrap() > 300, "{pop:#}");
        total += pop["packets"].as_u64().unwrap();
    }
    assert_eq!(capture["packets_captured"].as_u64().unwrap(), total, "{capture:#}");
    let key = capture["object_key"].as_str().unwrap();
    let packets = edgecap_e2e::tshark_packets(&cluster.s3.object_path(BUCKET, &format!("edge/{key}")));
    assert_eq!(packets.len() as u64, total);
}

#[test]
fn three_coordinators_share_etcd_and_survive_failures() {
    let Some(mut cluster) = Cluster::new("three_coordinators_share_etcd_and_survive_failures") else { return };
    // Each agent is on its own replica; every replica sees all three.
    let agents = cluster.wait_agents(1, 3);
    let on: Vec<&str> = agents.as_array().unwrap().iter().map(|a| a["coordinator"].as_str().unwrap()).collect();
    assert_eq!(on, ["c1", "c2", "c3"], "{agents:#}");

    // The bucket is validated through one replica and used through another.
    let dest = cluster.destination();
    let created = cluster.cli(1, &["ownership", "create", "--destination-conf", &dest]).unwrap();
    let text = std::fs::read_to_string(
        cluster.s3.object_path(BUCKET, &format!("edge/{}", created["filename"].as_str().unwrap())),
    )
    .unwrap();
    cluster
        .cli(2, &["ownership", "validate", "--destination-conf", &dest, "--ownership-challenge", text.trim()])
        .unwrap();
    cluster.start_traffic(150);

    // A sample capture asked of one replica reads every PoP's lookback, including the two
    // agents connected to the other replicas (relayed through etcd).
    std::thread::sleep(Duration::from_secs(2));
    let sample = cluster
        .cli(0, &["capture", "create", "--time-limit", "60", "--packet-limit", "300", "--protocol", "17", "--wait"])
        .unwrap_or_else(|e| panic!("sample: {e}\n{}", cluster.all_logs()));
    assert_eq!(sample["status"], "success", "{sample:#}");
    assert_eq!(sample["packets_captured"], 300, "{sample:#}");
    let sampled = pops(&sample);
    assert_eq!(sampled.len(), 3, "{sample:#}");
    for pop in &sampled {
        assert_eq!(pop["status"], "done", "{pop:#}");
        assert!(pop["matched"].as_u64().unwrap() > 100, "{pop:#}");
    }
    // Downloaded from another replica than the one that made it (shared --objects bucket).
    let file = cluster.dir.path().join("sample.pcap");
    cluster.cli(2, &["capture", "download", sample["id"].as_str().unwrap(), "-o", file.to_str().unwrap()]).unwrap();
    assert_eq!(edgecap_e2e::tshark_packets(&file).len(), 300);

    // 1. The leader dies mid-capture; it is also the coordinator one agent is connected to.
    let leader = cluster.leader();
    let survivor = (leader + 1) % 3;
    let id = cluster.create_full(survivor, 14);
    std::thread::sleep(Duration::from_secs(4));
    cluster.coordinators[leader] = None; // SIGKILL
    let capture = cluster.wait_final(survivor, &id);
    assert_complete(&cluster, &capture);
    assert_eq!(cluster.merges(&id), 1, "merged exactly once:\n{}", cluster.logs("coordinator"));
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader);
    // The killed replica comes back (as a follower); its agent may stay where it moved.
    cluster.coordinators[leader] = Some(cluster.start_coordinator(leader));
    cluster.wait_agents(leader, 3);

    // 2. etcd restarts in the middle of a capture: the capture goes on and completes.
    let id = cluster.create_full(leader, 12);
    std::thread::sleep(Duration::from_secs(3));
    cluster.etcd.stop();
    std::thread::sleep(Duration::from_secs(4));
    cluster.etcd.start();
    let capture = cluster.wait_final(leader, &id);
    assert_complete(&cluster, &capture);
    assert_eq!(cluster.merges(&id), 1, "merged exactly once:\n{}", cluster.logs("coordinator"));

    // 3. An agent dies: its PoP is reported lost, the other PoPs' results are complete.
    let id = cluster.create_full(survivor, 10);
    std::thread::sleep(Duration::from_secs(3));
    cluster.agents[2] = None;
    let capture = cluster.wait_final(survivor, &id);
    assert_eq!(capture["status"], "success", "{capture:#}\n{}", cluster.all_logs());
    assert!(capture["error_message"].as_str().unwrap_or("").contains("ord03"), "{capture:#}");
    for pop in pops(&capture) {
        if pop["pop"] == "ord03" {
            assert_eq!(pop["status"], "failed", "{pop:#}");
            assert!(pop["error"].as_str().unwrap().contains("disconnected"), "{pop:#}");
        } else {
            assert_eq!(pop["status"], "done", "{pop:#}");
            assert_eq!(delivered(&pop), pop["packets"].as_u64().unwrap(), "{pop:#}");
        }
    }
    assert_eq!(cluster.merges(&id), 1);
    // The PoP failure was decided once, by the leader.
    let lost = cluster.logs("coordinator").lines().filter(|l| l.contains("PoP failed") && l.contains(&id)).count();
    assert_eq!(lost, 1, "{}", cluster.logs("coordinator"));

    // With that agent still down, the next capture names its PoP as skipped (offline).
    wait_for("the dead agent's presence to lapse", Duration::from_secs(30), || {
        cluster.cli(0, &["agents"]).ok().filter(|v| v.as_array().is_some_and(|a| a.len() == 2))
    });
    let id = cluster.create_full(0, 3);
    let capture = cluster.wait_final(0, &id);
    assert_eq!(capture["status"], "success", "{capture:#}");
    let ord03 = pops(&capture).into_iter().find(|p| p["pop"] == "ord03").expect("ord03 listed");
    assert_eq!(ord03["status"], "skipped", "{ord03:#}");
    assert!(capture["error_message"].as_str().unwrap().contains("skipped (offline): ord03"), "{capture:#}");
}
