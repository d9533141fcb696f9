//! The scale path at small scale: 100 simulated agents (`edgecap-bench simulate`, the real
//! agent code with a replayed packet source, in their own process) over two coordinators on
//! a real etcd, with an S3-compatible server for the full capture. The agents spread over
//! both replicas; a sample capture reaches every PoP; a full capture over one colo delivers
//! a merged file whose packets are exactly the sum of its PoPs'; nothing is left behind (no
//! shard in any spool, no working key in etcd, no scratch file). The same binary, at 300 and
//! 1000 agents, is what docs/benchmarks.md measures.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::process::Command;
use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig, FullSettings};
use edgecap_e2e::{EtcdServer, S3Server, api_call, wait_for};
use serde_json::{Value, json};

const TOKEN: &str = "scale-test-token-0123456789";
const BUCKET: &str = "scale";
const AGENTS: usize = 100;

async fn start(name: &str, etcd: &EtcdServer, dir: &std::path::Path, s3: &S3Server) -> Coordinator {
    let state = edgecap_state::StateConfig::parse(&format!("etcd://{}/scale", etcd.client), dir).unwrap();
    let base = edgecap_e2e::bucket_config(dir, name, TOKEN, s3, BUCKET);
    let full = FullSettings { upload_grace: Duration::from_secs(60), ..base.full };
    Coordinator::start(CoordinatorConfig { state, full, ..base }).await.unwrap()
}

async fn wait_final(url: &str, id: &str, timeout: Duration) -> Value {
    edgecap_e2e::wait_final(url, TOKEN, id, timeout).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_simulated_agents_over_two_coordinators() {
    let test = "a_hundred_simulated_agents_over_two_coordinators";
    let Some(etcd) = EtcdServer::launch(test) else { return };
    let Some(s3) = S3Server::launch(test) else { return };
    s3.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "scale").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let c1 = start("c1", &etcd, dir.path(), &s3).await;
    let c2 = start("c2", &etcd, dir.path(), &s3).await;
    let endpoints = format!("https://127.0.0.1:{},https://127.0.0.1:{}", c1.grpc_addr.port(), c2.grpc_addr.port());

    let spool = dir.path().join("spool");
    let agents = AGENTS.to_string();
    let args = ["--agents", &agents, "--pops", "50", "--colos", "ams,ord", "--rate", "50", "--shard-seconds", "1"];
    let mut sim = edgecap_e2e::simulate("all", dir.path(), &pki, &endpoints, &spool, &args);
    wait_for("every simulated agent to connect", Duration::from_secs(120), || {
        sim.assert_running("the simulator");
        (c1.connected_agents().len() + c2.connected_agents().len() == AGENTS).then_some(())
    });
    // Spread over both replicas (each agent ranks them by its own hash).
    let (n1, n2) = (c1.connected_agents().len(), c2.connected_agents().len());
    assert!(n1 >= 25 && n2 >= 25, "agents not spread: {n1} on c1, {n2} on c2");

    // A sample capture asked of c1 reaches all 100 agents, half of them relayed through etcd.
    let url = format!("http://{}/client/v4/accounts/acct/pcaps", c1.api_addr);
    // c1 sees c2's agents through their presence keys in etcd, written as they connect.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, agents) = api_call("GET", &format!("http://{}/edgecap/v1/agents", c1.api_addr), TOKEN, None).await;
        if agents["result"].as_array().map_or(0, Vec::len) == AGENTS {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "c1 does not see every agent: {agents}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And every lookback holds a couple of seconds of packets.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body = json!({"system": "magic-transit", "type": "simple", "time_limit": 60, "packet_limit": 10000});
    let (status, created) = api_call("POST", &url, TOKEN, Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let sample = wait_final(&url, created["result"]["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(sample["status"], "success", "{sample:#}");
    let pops = sample["pops"].as_array().unwrap();
    assert_eq!(pops.len(), AGENTS, "{sample:#}");
    assert!(pops.iter().all(|p| p["status"] == "done" && p["packets"].as_u64().unwrap() > 0), "{sample:#}");
    let total: u64 = pops.iter().map(|p| p["packets"].as_u64().unwrap()).sum();
    assert_eq!(sample["packets_captured"].as_u64().unwrap(), total);

    // A full capture over colo `ams` (its 50 agents), into the S3-compatible server, asked of c2.
    let url2 = format!("http://{}/client/v4/accounts/acct/pcaps", c2.api_addr);
    let destination = edgecap_e2e::own_bucket(&url2, TOKEN, &s3, BUCKET, "edge").await;
    let body = json!({"system": "magic-transit", "type": "full", "time_limit": 4, "colo_name": "ams",
        "destination_conf": destination, "packet_limit": 10000});
    let (status, created) = api_call("POST", &url2, TOKEN, Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();
    let full = wait_final(&url2, &id, Duration::from_secs(120)).await;
    assert_eq!(full["status"], "success", "{full:#}\n{}", sim.log_text());
    let pops = full["pops"].as_array().unwrap();
    assert_eq!(pops.len(), AGENTS / 2, "{full:#}");
    assert!(
        pops.iter().all(|p| p["status"] == "done" && p["pop"].as_str().unwrap().starts_with("ams")),
        "{full:#}\n{}",
        sim.log_text()
    );
    let total: u64 = pops.iter().map(|p| p["packets"].as_u64().unwrap()).sum();
    assert!(total > 0);
    assert_eq!(full["packets_captured"].as_u64().unwrap(), total, "{full:#}");
    // The record keeps no shard; the API lists them from their own keys.
    let (_, detail) = api_call("GET", &format!("{url}/{id}"), TOKEN, None).await;
    let delivered: u64 = detail["result"]["pops"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["shards"].as_array().cloned().unwrap_or_default())
        .map(|s| s["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(delivered, total, "{detail:#}");
    let merged =
        edgecap_e2e::tshark_packets(&s3.object_path(BUCKET, &format!("edge/{}", full["object_key"].as_str().unwrap())));
    assert_eq!(merged.len() as u64, total, "the merged file holds every PoP's packets");

    // Nothing left behind: spools empty of shards and of the capture's directories (a
    // finished capture is a line of the agent's finished.jsonl), no working keys, no scratch
    // files.
    let leftovers = |dir: &std::path::Path| -> Vec<String> {
        walk(dir)
            .into_iter()
            .filter(|p| p.ends_with(".pcap") || p.ends_with(".json.tmp") || p.ends_with("job.json"))
            .collect()
    };
    wait_for("the spools to empty", Duration::from_secs(30), || leftovers(&spool).is_empty().then_some(()));
    let store = edgecap_state::open(
        &edgecap_state::StateConfig::parse(&format!("etcd://{}/scale", etcd.client), dir.path()).unwrap(),
    )
    .await
    .unwrap();
    // The leader deletes the working keys just after writing the final status.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for prefix in ["/edgecap/v1/jobs/", "/edgecap/v1/active/", "/edgecap/v1/pops/", "/edgecap/v1/budget/"] {
        loop {
            let keys: Vec<String> = store.list(prefix).await.unwrap().into_iter().map(|kv| kv.key).collect();
            if keys.is_empty() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{prefix}: {keys:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for tmp in ["tmp-c1", "tmp-c2"] {
        assert!(walk(&dir.path().join(tmp)).is_empty(), "{tmp} holds scratch files");
    }
    // The shards are deleted from the bucket (many to a request) once merged; the merged
    // file stays.
    let shard_keys: Vec<String> = detail["result"]["pops"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["shards"].as_array().cloned().unwrap_or_default())
        .map(|s| format!("edge/{}", s["key"].as_str().unwrap()))
        .collect();
    assert!(shard_keys.len() >= AGENTS / 2, "{detail:#}");
    wait_for("the shards to leave the bucket", Duration::from_secs(30), || {
        let keys = s3.keys(BUCKET, "edge/");
        shard_keys.iter().all(|k| !keys.contains(k)).then_some(())
    });
    assert!(s3.object_path(BUCKET, &format!("edge/{}", full["object_key"].as_str().unwrap())).exists());

    let _ = Command::new("kill").args(["-TERM", &sim.child.id().to_string()]).status();
    let status = wait_for("the simulator to stop", Duration::from_secs(30), || sim.child.try_wait().unwrap());
    assert!(status.success(), "{}", sim.log_text());
    c1.shutdown().await.unwrap();
    c2.shutdown().await.unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

/// The benchmark driver's own arithmetic: its percentiles are nearest-rank (the doctests of
/// `bench/scale.py`; p99 of 100 starts had been reported as the slowest of them).
#[test]
fn the_scale_benchmarks_percentiles_are_nearest_rank() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/scale.py");
    let out = Command::new("python3").args(["-m", "doctest"]).arg(&script).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "doctests of {} failed:\n{text}", script.display());
}
