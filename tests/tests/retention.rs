//! Retention with a short period, against a real coordinator on a real etcd: a capture past
//! its retention answers 404 and leaves the list at once, and the leader's sweep deletes its
//! record and index entries from the state (read from etcd while the coordinator runs).

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig, RateLimits};
use edgecap_e2e::api_call;
use edgecap_state::StateConfig;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn expired_captures_answer_404_and_are_swept_from_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "retention").unwrap();
    let tls = edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let Some(etcd) = edgecap_e2e::EtcdServer::launch("expired_captures_answer_404_and_are_swept_from_the_state") else {
        return;
    };
    let state = StateConfig::parse(&format!("etcd://{}/retention", etcd.client), dir.path()).unwrap();
    let token = "retention-token-0123456789";
    let coordinator = Coordinator::start(CoordinatorConfig {
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        state: state.clone(),
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.path().join("objects") },
        tmp_dir: dir.path().join("tmp"),
        rate_limits: RateLimits::off(),
        agent_wait: Duration::ZERO,
        tokens: vec![("acct".into(), token.into())],
        retention: Some(Duration::from_secs(10)),
        ..Default::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}/client/v4/accounts/acct/pcaps", coordinator.api_addr);
    let body = json!({"system": "magic-transit", "type": "simple", "time_limit": 5, "packet_limit": 10});
    let created_at = tokio::time::Instant::now();
    let (status, created) = api_call("POST", &url, token, Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();
    // No agent: it fails at once, and is there while within its retention.
    for _ in 0..40 {
        let (_, v) = api_call("GET", &format!("{url}/{id}"), token, None).await;
        if v["result"]["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, listed) = api_call("GET", &url, token, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["result"].as_array().unwrap().len(), 1, "{listed}");

    tokio::time::sleep_until(created_at + Duration::from_secs(11)).await;
    let (status, gone) = api_call("GET", &format!("{url}/{id}"), token, None).await;
    assert_eq!(status, 404, "{gone}");
    assert!(gone["errors"][0]["message"].as_str().unwrap().contains("pcap_id"), "{gone}");
    let (_, listed) = api_call("GET", &url, token, None).await;
    assert!(listed["result"].as_array().unwrap().is_empty(), "{listed}");
    let (status, _) = api_call("GET", &format!("{url}/{id}/download"), token, None).await;
    assert_eq!(status, 404);
    // The sweep runs every retention/4 on the leader (this replica).
    let store = edgecap_state::open(&state).await.unwrap();
    let mut left: Vec<String> = Vec::new();
    for _ in 0..60 {
        left = store
            .list("/edgecap/v1/")
            .await
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .filter(|k| k.contains(&id))
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(left.is_empty(), "keys of the expired capture left in the state: {left:?}");
    coordinator.shutdown().await.unwrap();
}
