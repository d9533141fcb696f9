//! A full capture's limits are a budget for the merged file, shared by its PoPs
//! (coordinator/src/full/budget.rs, agent/src/full/budget.rs). Two busy PoPs (`ams`, 1500
//! packets/s each) and two quiet ones (`ord`, 10 packets/s each), simulated agents in two
//! processes over two coordinators on one etcd, one capture of both colos with a packet
//! limit: the merged file holds no more than the limit (per-PoP limits would have let the
//! busy PoPs deliver twice it); the busy PoPs got more than their first portions and ended
//! for the budget; the quiet PoPs were never starved (they captured until the time limit);
//! and nearly the whole budget was used.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig};
use edgecap_e2e::{EtcdServer, S3Server, api_call, wait_for};
use serde_json::{Value, json};

const TOKEN: &str = "budget-test-token-0123456789";
const BUCKET: &str = "budget";
const LIMIT: u64 = 3000;

async fn start(name: &str, etcd: &EtcdServer, dir: &std::path::Path, s3: &S3Server) -> Coordinator {
    let state = edgecap_state::StateConfig::parse(&format!("etcd://{}/budget", etcd.client), dir).unwrap();
    Coordinator::start(CoordinatorConfig { state, ..edgecap_e2e::bucket_config(dir, name, TOKEN, s3, BUCKET) })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limits_hold_for_the_merged_file_and_no_pop_is_starved() {
    let test = "the_limits_hold_for_the_merged_file_and_no_pop_is_starved";
    let Some(etcd) = EtcdServer::launch(test) else { return };
    let Some(s3) = S3Server::launch(test) else { return };
    s3.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "budget").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let c1 = start("c1", &etcd, dir.path(), &s3).await;
    let c2 = start("c2", &etcd, dir.path(), &s3).await;
    let endpoints = format!("https://127.0.0.1:{},https://127.0.0.1:{}", c1.grpc_addr.port(), c2.grpc_addr.port());
    let spool = dir.path().join("spool");
    // ams000, ams001 at 1500 packets/s; ord002, ord003 at 10.
    let mut busy = edgecap_e2e::simulate(
        "busy",
        dir.path(),
        &pki,
        &endpoints,
        &spool,
        &["--agents", "2", "--colos", "ams", "--rate", "1500", "--shard-seconds", "1"],
    );
    let mut quiet = edgecap_e2e::simulate(
        "quiet",
        dir.path(),
        &pki,
        &endpoints,
        &spool,
        &["--agents", "2", "--first", "2", "--colos", "ord", "--rate", "10", "--shard-seconds", "1"],
    );
    wait_for("the four agents to connect", Duration::from_secs(60), || {
        busy.assert_running("the busy PoPs' simulator");
        quiet.assert_running("the quiet PoPs' simulator");
        (c1.connected_agents().len() + c2.connected_agents().len() == 4).then_some(())
    });

    let url = format!("http://{}/client/v4/accounts/acct/pcaps", c1.api_addr);
    let destination = edgecap_e2e::own_bucket(&url, TOKEN, &s3, BUCKET, "edge").await;
    let body = json!({"system": "magic-transit", "type": "full", "time_limit": 8, "colo_name": "ams",
        "colo_names": ["ams", "ord"], "destination_conf": destination, "packet_limit": LIMIT});
    let (status, created) = api_call("POST", &url, TOKEN, Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();
    let full = edgecap_e2e::wait_final(&url, TOKEN, &id, Duration::from_secs(90)).await;
    assert_eq!(full["status"], "success", "{full:#}\n{}\n{}", busy.log_text(), quiet.log_text());

    let pops = full["pops"].as_array().unwrap();
    assert_eq!(pops.len(), 4, "{full:#}");
    let of =
        |colo: &str| -> Vec<&Value> { pops.iter().filter(|p| p["pop"].as_str().unwrap().starts_with(colo)).collect() };
    let packets = |p: &Value| p["packets"].as_u64().unwrap();
    let total: u64 = pops.iter().map(packets).sum();
    // The merged file: within the limit, and exactly the PoPs' packets.
    let merged =
        edgecap_e2e::tshark_packets(&s3.object_path(BUCKET, &format!("edge/{}", full["object_key"].as_str().unwrap())));
    assert_eq!(merged.len() as u64, total, "{full:#}");
    assert_eq!(full["packets_captured"].as_u64().unwrap(), total);
    assert!(total <= LIMIT, "{total} packets delivered for a limit of {LIMIT}: {full:#}");
    // Each PoP's first portion is LIMIT / (4 x 4) = 187. The busy PoPs asked for more and
    // got it, until the budget was spent, and then stopped for it.
    let first = LIMIT / 16;
    for p in of("ams") {
        assert_eq!(p["status"], "done", "{p}");
        assert!(packets(p) > first, "a busy PoP got more than its first portion: {p}");
        assert_eq!(p["stop_reason"], "budget", "{p}");
    }
    // The quiet PoPs were not starved: about 80 packets each in 8 s, within their first
    // portion, captured whole until the time limit.
    for p in of("ord") {
        assert_eq!(p["status"], "done", "{p}");
        assert_eq!(p["stop_reason"], "time_limit", "{p}");
        assert!((40..=first).contains(&packets(p)), "a quiet PoP's packets: {p}");
    }
    // All of the budget was handed out, none lost: what is missing from the limit is only
    // what the quiet PoPs held and did not need.
    let unused_by_quiet: u64 = of("ord").iter().map(|p| first - packets(p)).sum();
    assert_eq!(total + unused_by_quiet, LIMIT, "{full:#}");
    // Its budget key is gone with the capture's working keys.
    let store = edgecap_state::open(
        &edgecap_state::StateConfig::parse(&format!("etcd://{}/budget", etcd.client), dir.path()).unwrap(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !store.list("/edgecap/v1/budget/").await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the budget key was not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c1.shutdown().await.unwrap();
    c2.shutdown().await.unwrap();
}
