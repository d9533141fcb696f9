//! The coordinator's API driven through its router, without sockets: a real coordinator with
//! memory state and local objects, on loopback listeners.

#![allow(dead_code, reason = "each test file uses some of the helpers")]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use edgecap_coordinator::{Coordinator, CoordinatorConfig, FullSettings, Limits, RateLimits};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const TOKEN_A: &str = "token-of-account-a-0123456789";
pub const TOKEN_B: &str = "token-of-account-b-0123456789";

/// A real coordinator (memory state, local objects, loopback listeners), driven through its
/// router without sockets.
pub struct Api {
    pub router: axum::Router,
    /// Its background work ends with the test's runtime.
    _coordinator: Coordinator,
    _dir: tempfile::TempDir,
}

pub async fn api_with(rate_limits: RateLimits) -> Api {
    api_configured(rate_limits, FullSettings::default()).await
}

pub async fn api_configured(rate_limits: RateLimits, full: FullSettings) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "api test").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "test", &["127.0.0.1".into()]).unwrap();
    let credentials = [(
        "bucket-1".to_string(),
        serde_json::from_value(json!({"access_key_id": "k", "secret_access_key": "s"})).unwrap(),
    )]
    .into();
    let coordinator = Coordinator::start(CoordinatorConfig {
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        name: "test".into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: edgecap_tls::TlsFiles::in_dir(&pki, "coordinator"),
        tls_reload_interval: Duration::from_secs(60),
        state: edgecap_state::StateConfig::Memory,
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.path().join("o") },
        tmp_dir: dir.path().join("tmp"),
        // Many sample captures are created back to back; the running-per-account bound is not
        // what these tests are about.
        limits: Limits { max_running_samples_per_account: 10_000, ..Limits::default() },
        rate_limits,
        sample_timeout: Duration::from_secs(1),
        agent_wait: Duration::ZERO,
        tokens: vec![("acct-a".into(), TOKEN_A.into()), ("acct-b".into(), TOKEN_B.into())],
        s3_credentials: credentials,
        full,
        ..Default::default()
    })
    .await
    .unwrap();
    Api { router: coordinator.router(), _coordinator: coordinator, _dir: dir }
}

pub async fn api() -> Api {
    api_with(RateLimits::off()).await
}

impl Api {
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        // Headers the official SDKs send must be ignored.
        req = req.header("api-version", "2026-11-26").header("x-stainless-lang", "python");
        let req = req.body(Body::from(body.unwrap_or("").to_string())).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        (status, v)
    }

    pub async fn create(&self, body: &Value) -> (StatusCode, Value) {
        self.call("POST", "/client/v4/accounts/acct-a/pcaps", Some(TOKEN_A), Some(&body.to_string())).await
    }
}

pub fn assert_error(status: StatusCode, v: &Value, want_status: u16, want_code: u64, field: &str, case: &str) {
    assert_eq!(status.as_u16(), want_status, "{case}: status, body {v}");
    assert_eq!(v["success"], json!(false), "{case}: envelope {v}");
    assert_eq!(v["result"], Value::Null, "{case}");
    assert_eq!(v["messages"], json!([]), "{case}");
    let err = &v["errors"][0];
    assert_eq!(err["code"].as_u64(), Some(want_code), "{case}: code, body {v}");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains(field), "{case}: message {msg:?} must name {field:?}");
}

pub fn simple() -> Value {
    json!({"system": "magic-transit", "type": "simple", "time_limit": 10, "packet_limit": 100})
}

pub fn full() -> Value {
    json!({"system": "magic-transit", "type": "full", "time_limit": 10, "colo_name": "ord01",
           "destination_conf": "s3://bucket-1/x?region=us-east-1"})
}
