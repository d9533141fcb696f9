//! A sample query relayed through etcd while the replica that must answer it is cut off
//! from etcd (its path to etcd, through a proxy the test cuts, fails; etcd and the asking
//! replica's path stay up). When its path heals, that replica's watch restarts after the
//! query was written: the watch's catch-up, which reads the requests still stored, is what
//! finds it. Real etcd, two coordinators, one simulated agent (the real agent code).

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig};
use edgecap_e2e::{EtcdServer, TcpProxy, api_call, wait_for};
use serde_json::json;

const TOKEN: &str = "relay-interrupted-token-0123456789";

async fn start(name: &str, etcd: &str, dir: &std::path::Path) -> Coordinator {
    let state = edgecap_state::StateConfig::parse(&format!("etcd://{etcd}/relay"), dir).unwrap();
    // Longer than the cut, so that only a query never seen by the answering replica fails.
    let sample_timeout = Duration::from_secs(20);
    // No waiting for agents to appear: had the asking replica lost sight of the agent (its
    // replica's presence lapsing during the cut), the capture would fail here rather than be
    // relayed afresh after the heal, past the catch-up this test is about.
    let agent_wait = Duration::ZERO;
    let config = edgecap_e2e::loopback_config(dir, name, TOKEN);
    Coordinator::start(CoordinatorConfig { state, sample_timeout, agent_wait, ..config }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_relayed_while_the_answering_replica_was_cut_off_from_etcd_is_answered() {
    let test = "a_query_relayed_while_the_answering_replica_was_cut_off_from_etcd_is_answered";
    let Some(etcd) = EtcdServer::launch(test) else { return };
    let proxy = TcpProxy::start(etcd.client.parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "relay").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let asking = start("asking", &etcd.client, dir.path()).await;
    let answering = start("answering", &proxy.addr.to_string(), dir.path()).await;

    // The one agent is connected to the answering replica only.
    let endpoint = format!("https://127.0.0.1:{}", answering.grpc_addr.port());
    let args = ["--agents", "1", "--rate", "200"];
    let mut sim = edgecap_e2e::simulate("one", dir.path(), &pki, &endpoint, &dir.path().join("spool"), &args);
    wait_for("the agent to connect", Duration::from_secs(60), || {
        sim.assert_running("the simulator");
        (answering.connected_agents().len() == 1).then_some(())
    });
    let agents_url = format!("http://{}/edgecap/v1/agents", asking.api_addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, agents) = api_call("GET", &agents_url, TOKEN, None).await;
        if agents["result"].as_array().map_or(0, Vec::len) == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the asking replica does not see the agent: {agents}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let url = format!("http://{}/client/v4/accounts/acct/pcaps", asking.api_addr);
    let sample = || json!({"system": "magic-transit", "type": "simple", "time_limit": 60, "packet_limit": 100});
    let answered = |capture: &serde_json::Value| {
        let pops = capture["pops"].as_array().cloned().unwrap_or_default();
        capture["status"] == "success" && pops.len() == 1 && pops[0]["packets"].as_u64().unwrap_or(0) > 0
    };
    // Relayed with nothing cut: answered.
    let (status, created) = api_call("POST", &url, TOKEN, Some(sample())).await;
    assert_eq!(status, 200, "{created}");
    let before =
        edgecap_e2e::wait_final(&url, TOKEN, created["result"]["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert!(answered(&before), "{before:#}");

    // Cut off: the answering replica's watch ends at once, and its restarts fail until
    // healed. The cut lasts under 2 s, within its replica key's 3 s lease, so the asking
    // replica still sees the agent.
    assert!(proxy.cut() >= 1, "the answering replica had no connection to etcd to cut");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, created) = api_call("POST", &url, TOKEN, Some(sample())).await;
    assert_eq!(status, 200, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, meanwhile) = api_call("GET", &format!("{url}/{id}"), TOKEN, None).await;
    assert_ne!(meanwhile["result"]["status"], "success", "answered while cut off: {meanwhile:#}");
    proxy.heal();

    let after = edgecap_e2e::wait_final(&url, TOKEN, &id, Duration::from_secs(40)).await;
    assert!(answered(&after), "the query written while the replica was cut off was not answered: {after:#}");
    sim.assert_running("the simulator");
    asking.shutdown().await.unwrap();
    answering.shutdown().await.unwrap();
}
