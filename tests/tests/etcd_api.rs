//! With state in etcd: while etcd is down, the API answers 503 with a clear error (never a
//! hang, never a 500), and it recovers by itself when etcd is back, with nothing lost.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig, Limits, RateLimits};
use edgecap_e2e::EtcdServer;
use serde_json::{Value, json};

const TOKEN: &str = "etcd-api-token-0123456789";

async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    edgecap_e2e::api_call(method, url, TOKEN, body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn api_answers_503_while_etcd_is_down_and_recovers() {
    let Some(mut etcd) = EtcdServer::launch("api_answers_503_while_etcd_is_down_and_recovers") else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "t").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let coord = Coordinator::start(CoordinatorConfig {
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        name: "c".into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: edgecap_tls::TlsFiles::in_dir(&pki, "coordinator"),
        tls_reload_interval: Duration::from_secs(5),
        state: edgecap_state::StateConfig::Etcd {
            endpoints: etcd.endpoints(),
            prefix: "/edgecap-test".into(),
            auth: Default::default(),
        },
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.path().join("objects") },
        tmp_dir: dir.path().join("tmp"),
        limits: Limits::default(),
        rate_limits: RateLimits::off(),
        sample_timeout: Duration::from_secs(2),
        // The (agentless) sample capture below waits this long for an agent, so etcd is
        // stopped while it runs and its result must be written after the outage.
        agent_wait: Duration::from_secs(2),
        tokens: vec![("acct".into(), TOKEN.into())],
        s3_credentials: Default::default(),
        full: Default::default(),
        ..Default::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}/client/v4/accounts/acct/pcaps", coord.api_addr);
    let body = json!({"system": "magic-transit", "type": "simple", "time_limit": 10, "packet_limit": 10});

    let (status, first) = call("POST", &url, Some(body.clone())).await;
    assert_eq!(status, 200, "{first}");
    let first_id = first["result"]["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await; // its run is waiting for an agent

    etcd.stop();
    for (method, b) in [("POST", Some(body.clone())), ("GET", None)] {
        let (status, v) = call(method, &url, b).await;
        assert_eq!(status, 503, "{method} while etcd is down: {v}");
        assert_eq!(v["success"], false);
        assert_eq!(v["errors"][0]["code"], 1500);
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("state store unavailable"), "{v}");
    }

    // Down past the moment the sample capture finishes (agent_wait), so its result write fails.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    etcd.start();
    let mut recovered = None;
    for _ in 0..60 {
        let (status, v) = call("GET", &url, None).await;
        if status == 200 {
            recovered = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listed = recovered.expect("the API recovers when etcd is back");
    let ids: Vec<&str> = listed["result"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&first_id.as_str()), "what was accepted before the outage is still there: {ids:?}");
    // The capture that finished during the outage has its result written now.
    let mut finished = None;
    for _ in 0..60 {
        let (_, v) = call("GET", &format!("{url}/{first_id}"), None).await;
        if v["result"]["status"] != "pending" {
            finished = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let finished = finished.expect("the result of a capture that ended during the outage is written");
    assert_eq!(finished["result"]["status"], "failed", "{finished}");
    assert!(finished["result"]["error_message"].as_str().unwrap().contains("no agent"), "{finished}");
    let (status, _) = call("POST", &url, Some(body)).await;
    assert_eq!(status, 200, "writes work again");
    coord.shutdown().await.unwrap();
}
