//! An agent's presence outlives the loss of its lease: when etcd forgets the lease (slow past
//! its TTL, or revoked), the coordinator publishes the presence again on a new one, so a
//! connected agent never stays unseen (it would be left out of every capture). Real etcd,
//! one coordinator, one simulated agent; the lease is revoked with `etcdctl`.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::process::Command;
use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig};
use edgecap_e2e::{EtcdServer, wait_for};

const TOKEN: &str = "presence-test-token-0123456789";
const KEY: &str = "/edgecap/v1/agents/sim-00000";

/// The lease (decimal) of the presence key, if the key exists.
fn lease_of(etcd: &EtcdServer) -> Option<i64> {
    let out = Command::new("etcdctl")
        .args(["--endpoints", &etcd.client, "get", KEY, "--write-out", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["kvs"][0]["lease"].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_presence_lease_is_replaced() {
    let test = "a_lost_presence_lease_is_replaced";
    let Some(etcd) = EtcdServer::launch(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "presence").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let state = edgecap_state::StateConfig::parse(&format!("etcd://{}", etcd.client), dir.path()).unwrap();
    let c = Coordinator::start(CoordinatorConfig { state, ..edgecap_e2e::loopback_config(dir.path(), "c", TOKEN) })
        .await
        .unwrap();
    let endpoint = format!("https://127.0.0.1:{}", c.grpc_addr.port());
    let mut sim =
        edgecap_e2e::simulate("one", dir.path(), &pki, &endpoint, &dir.path().join("spool"), &["--agents", "1"]);
    let first = wait_for("the agent's presence", Duration::from_secs(60), || {
        sim.assert_running("the simulator");
        lease_of(&etcd)
    });
    let revoked = Command::new("etcdctl")
        .args(["--endpoints", &etcd.client, "lease", "revoke", &format!("{first:x}")])
        .output()
        .unwrap();
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    assert_eq!(lease_of(&etcd), None, "revoking the lease deleted the presence");
    // Within one renewal interval (5 s) it is back, on another lease.
    let second = wait_for("the presence to be published again", Duration::from_secs(15), || lease_of(&etcd));
    assert_ne!(first, second);
    assert_eq!(c.connected_agents().len(), 1, "the agent stayed connected");
    c.shutdown().await.unwrap();
}
