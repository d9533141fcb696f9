//! The API's own bounds, against a real coordinator on loopback and a real S3-compatible
//! server: the caller is authenticated before its body is read, a body larger than the API
//! takes is refused with the envelope (413), and an account cannot hold more than 100 bucket
//! ownerships (422 naming the limit).

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::io::{Read, Write};
use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig, EndpointPolicy, FullSettings, Limits, RateLimits};
use edgecap_e2e::S3Server;
use serde_json::{Value, json};

const TOKEN: &str = "api-limits-test-token-012345";
const BUCKET: &str = "limits";

async fn coordinator(dir: &std::path::Path, s3: &S3Server) -> Coordinator {
    let pki = dir.join("pki");
    edgecap_tls::pki::init_ca(&pki, "limits").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let creds = dir.join("creds.json");
    s3.write_credentials(&creds, BUCKET);
    Coordinator::start(CoordinatorConfig {
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        name: "c".into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: edgecap_tls::TlsFiles::in_dir(&pki, "coordinator"),
        tls_reload_interval: Duration::from_secs(60),
        state: edgecap_state::StateConfig::Memory,
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.join("objects") },
        tmp_dir: dir.join("tmp"),
        limits: Limits::default(),
        rate_limits: RateLimits::off(),
        sample_timeout: Duration::from_secs(1),
        agent_wait: Duration::ZERO,
        tokens: vec![("acct".into(), TOKEN.into())],
        s3_credentials: edgecap_coordinator::load_credentials(&creds).unwrap(),
        full: FullSettings { endpoints: EndpointPolicy { allow_private: true, allowed: vec![] }, ..Default::default() },
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A raw HTTP/1.1 exchange; returns the status and the JSON body.
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, Value) {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer (and close) before taking the whole body: that is the point.
    let _ = tcp.write_all(request);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // A chunked body: take the JSON object inside.
    let json = body.find('{').and_then(|a| body.rfind('}').map(|b| &body[a..=b])).unwrap_or("null");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

fn post(path: &str, token: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(t) = token {
        r.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_bounded_read_after_authentication_and_ownerships_are_limited() {
    let Some(s3) = S3Server::launch("bodies_are_bounded_read_after_authentication_and_ownerships_are_limited") else {
        return;
    };
    s3.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let coord = coordinator(dir.path(), &s3).await;
    let addr = coord.api_addr;
    let path = "/client/v4/accounts/acct/pcaps";
    let big = vec![b' '; 1 << 20];

    // Without a token, a megabyte of body is not read: 401, not 413 or 400.
    let (status, v) = tokio::task::spawn_blocking({
        let big = big.clone();
        move || raw(addr, &post(path, None, &big))
    })
    .await
    .unwrap();
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["errors"][0]["code"], 10000, "{v}");
    // With a token, it is refused with the envelope.
    let (status, v) = tokio::task::spawn_blocking(move || raw(addr, &post(path, Some(TOKEN), &big))).await.unwrap();
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["success"], false);
    assert_eq!(v["errors"][0]["code"], 1008, "{v}");
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("request body"), "{v}");

    // 100 ownerships, then a clear refusal naming the limit.
    let client = edgecap_client::Client::new(edgecap_client::Endpoint {
        api: format!("http://{addr}/client/v4"),
        account: "acct".into(),
        token: TOKEN.into(),
    })
    .unwrap();
    let destination = format!("s3://{BUCKET}/p?region=us-east-1&endpoint={}", s3.endpoint());
    for _ in 0..100 {
        client.call("POST", "/ownership", Some(&json!({"destination_conf": destination}))).await.unwrap();
    }
    let refused = client.call("POST", "/ownership", Some(&json!({"destination_conf": destination}))).await.unwrap_err();
    match refused {
        edgecap_client::ClientError::Api { status, code, message } => {
            assert_eq!((status, code), (422, Some(1202)), "{message}");
            assert!(message.contains("destination_conf") && message.contains("limit 100"), "{message}");
        }
        other => panic!("{other}"),
    }
    coord.shutdown().await.unwrap();
}
