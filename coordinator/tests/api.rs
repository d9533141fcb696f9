//! The REST API through the real router (no sockets): validation of every field, the
//! envelope, HTTP codes, auth and account isolation.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use edgecap_coordinator::{Coordinator, CoordinatorConfig, Limits, RateLimits};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN_A: &str = "token-of-account-a-0123456789";
const TOKEN_B: &str = "token-of-account-b-0123456789";

/// A real coordinator (memory state, local objects, loopback listeners), driven through its
/// router without sockets.
struct Api {
    router: axum::Router,
    /// Its background work ends with the test's runtime.
    _coordinator: Coordinator,
    _dir: tempfile::TempDir,
}

async fn api_with(rate_limits: RateLimits) -> Api {
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
        name: "test".into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: edgecap_tls::TlsFiles::in_dir(&pki, "coordinator"),
        tls_reload_interval: Duration::from_secs(60),
        state: edgecap_state::StateConfig::Memory,
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.path().join("o") },
        tmp_dir: dir.path().join("tmp"),
        limits: Limits::default(),
        rate_limits,
        sample_timeout: Duration::from_secs(1),
        agent_wait: Duration::ZERO,
        tokens: vec![("acct-a".into(), TOKEN_A.into()), ("acct-b".into(), TOKEN_B.into())],
        s3_credentials: credentials,
        full: Default::default(),
    })
    .await
    .unwrap();
    Api { router: coordinator.router(), _coordinator: coordinator, _dir: dir }
}

async fn api() -> Api {
    api_with(RateLimits::off()).await
}

impl Api {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
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

    async fn create(&self, body: &Value) -> (StatusCode, Value) {
        self.call("POST", "/client/v4/accounts/acct-a/pcaps", Some(TOKEN_A), Some(&body.to_string())).await
    }
}

fn assert_error(status: StatusCode, v: &Value, want_status: u16, want_code: u64, field: &str, case: &str) {
    assert_eq!(status.as_u16(), want_status, "{case}: status, body {v}");
    assert_eq!(v["success"], json!(false), "{case}: envelope {v}");
    assert_eq!(v["result"], Value::Null, "{case}");
    assert_eq!(v["messages"], json!([]), "{case}");
    let err = &v["errors"][0];
    assert_eq!(err["code"].as_u64(), Some(want_code), "{case}: code, body {v}");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains(field), "{case}: message {msg:?} must name {field:?}");
}

fn simple() -> Value {
    json!({"system": "magic-transit", "type": "simple", "time_limit": 10, "packet_limit": 100})
}

fn full() -> Value {
    json!({"system": "magic-transit", "type": "full", "time_limit": 10, "colo_name": "ord01",
           "destination_conf": "s3://bucket-1/x?region=us-east-1"})
}

/// (base, field, value or None to remove, status, code)
type Case = (&'static str, &'static str, Option<Value>, u16, u64);

fn cases() -> Vec<Case> {
    use edgecap_coordinator::code::*;
    let c = |base, field, value: Option<Value>, status, code| (base, field, value, status, code);
    let mut v = vec![
        // system
        c("simple", "system", None, 400, MISSING_FIELD as u64),
        c("simple", "system", Some(json!(1)), 400, WRONG_TYPE as u64),
        c("simple", "system", Some(json!("magic-wan")), 400, INVALID_VALUE as u64),
        c("simple", "system", Some(json!("magic-transit")), 200, 0),
        // type
        c("simple", "type", None, 400, MISSING_FIELD as u64),
        c("simple", "type", Some(json!(true)), 400, WRONG_TYPE as u64),
        c("simple", "type", Some(json!("sample")), 400, INVALID_VALUE as u64),
        // time_limit
        c("simple", "time_limit", None, 400, MISSING_FIELD as u64),
        c("simple", "time_limit", Some(json!("10")), 400, WRONG_TYPE as u64),
        c("simple", "time_limit", Some(json!(0)), 400, OUT_OF_RANGE as u64),
        c("simple", "time_limit", Some(json!(-5)), 400, OUT_OF_RANGE as u64),
        c("simple", "time_limit", Some(json!(301)), 400, OUT_OF_RANGE as u64),
        c("simple", "time_limit", Some(json!(10.5)), 400, INVALID_VALUE as u64),
        c("simple", "time_limit", Some(json!(300.0)), 200, 0),
        c("simple", "time_limit", Some(json!(1)), 200, 0),
        c("full", "time_limit", Some(json!(301)), 400, OUT_OF_RANGE as u64),
        // packet_limit
        c("simple", "packet_limit", None, 400, MISSING_FIELD as u64),
        c("simple", "packet_limit", Some(json!([1])), 400, WRONG_TYPE as u64),
        c("simple", "packet_limit", Some(json!(0)), 400, OUT_OF_RANGE as u64),
        c("simple", "packet_limit", Some(json!(10001)), 400, OUT_OF_RANGE as u64),
        c("simple", "packet_limit", Some(json!(10000)), 200, 0),
        c("simple", "packet_limit", Some(json!(1e4)), 200, 0),
        c("full", "packet_limit", Some(json!(10001)), 400, OUT_OF_RANGE as u64),
        // byte_limit
        c("simple", "byte_limit", Some(json!(100)), 400, NOT_APPLICABLE as u64),
        c("full", "byte_limit", Some(json!("1")), 400, WRONG_TYPE as u64),
        c("full", "byte_limit", Some(json!(0)), 400, OUT_OF_RANGE as u64),
        c("full", "byte_limit", Some(json!(1_000_000_001u64)), 400, OUT_OF_RANGE as u64),
        c("full", "byte_limit", Some(json!(1e6)), 403, BUCKET_NOT_VALIDATED as u64),
        // offset_time
        c("simple", "offset_time", Some(json!(5)), 400, WRONG_TYPE as u64),
        c("simple", "offset_time", Some(json!("yesterday")), 400, INVALID_VALUE as u64),
        c("simple", "offset_time", Some(json!("2001-01-01T00:00:00Z")), 400, OUT_OF_RANGE as u64),
        c("simple", "offset_time", Some(json!("2999-01-01T00:00:00Z")), 400, OUT_OF_RANGE as u64),
        c("full", "offset_time", Some(json!("2001-01-01T00:00:00Z")), 400, NOT_APPLICABLE as u64),
        // colo_name / destination_conf
        c("full", "colo_name", None, 400, MISSING_FIELD as u64),
        c("full", "colo_name", Some(json!(7)), 400, WRONG_TYPE as u64),
        c("full", "colo_name", Some(json!("ord 01; rm")), 400, INVALID_VALUE as u64),
        c("simple", "colo_name", Some(json!("ord01")), 400, NOT_APPLICABLE as u64),
        c("full", "destination_conf", None, 400, MISSING_FIELD as u64),
        c("full", "destination_conf", Some(json!({})), 400, WRONG_TYPE as u64),
        c("full", "destination_conf", Some(json!("gs://bucket")), 400, INVALID_VALUE as u64),
        c("full", "destination_conf", Some(json!("s3://b?secret=x")), 400, INVALID_VALUE as u64),
        c("simple", "destination_conf", Some(json!("s3://bucket")), 400, NOT_APPLICABLE as u64),
        // output_format (extension)
        c("full", "output_format", Some(json!(1)), 400, WRONG_TYPE as u64),
        c("full", "output_format", Some(json!("json")), 400, INVALID_VALUE as u64),
        c("simple", "output_format", Some(json!("pcapng")), 400, NOT_APPLICABLE as u64),
        c("full", "output_format", Some(json!("pcapng")), 403, BUCKET_NOT_VALIDATED as u64),
        // valid full captures still need a bucket validated for the account
        c("full", "colo_name", Some(json!("ord01")), 403, BUCKET_NOT_VALIDATED as u64),
        // filter_v1
        c("simple", "filter_v1", Some(json!("udp")), 400, WRONG_TYPE as u64),
        c("simple", "filter_v1", Some(json!({})), 200, 0),
        c("simple", "filter_v1", Some(Value::Null), 200, 0),
    ];
    let f = |field: &'static str, value: Value, status, code| {
        ("simple", field, Some(json!({ field.strip_prefix("filter_v1.").unwrap(): value })), status, code)
    };
    v.extend([
        f("filter_v1.source_address", json!(1), 400, WRONG_TYPE as u64),
        f("filter_v1.source_address", json!("10.0.0.300"), 400, INVALID_VALUE as u64),
        f("filter_v1.source_address", json!("1.2.3.4 or port 22"), 400, INVALID_VALUE as u64),
        f("filter_v1.source_address", json!("10.1.2.3/33"), 400, OUT_OF_RANGE as u64),
        f("filter_v1.source_address", json!("10.1.2.3/8"), 400, INVALID_VALUE as u64),
        f("filter_v1.source_address", json!("2001:db8::1"), 200, 0),
        f("filter_v1.destination_address", json!("$(reboot)"), 400, INVALID_VALUE as u64),
        f("filter_v1.destination_address", json!("10.0.0.0/8"), 200, 0),
        f("filter_v1.source_port", json!("80"), 400, WRONG_TYPE as u64),
        f("filter_v1.source_port", json!(-1), 400, OUT_OF_RANGE as u64),
        f("filter_v1.source_port", json!(70000), 400, OUT_OF_RANGE as u64),
        f("filter_v1.source_port", json!(0), 200, 0),
        f("filter_v1.destination_port", json!(65536), 400, OUT_OF_RANGE as u64),
        f("filter_v1.destination_port", json!(443.0), 200, 0),
        f("filter_v1.protocol", json!(300), 400, OUT_OF_RANGE as u64),
        f("filter_v1.protocol", json!(6.5), 400, INVALID_VALUE as u64),
        f("filter_v1.protocol", json!(null), 200, 0),
        f("filter_v1.protocol", json!(255), 200, 0),
        f("filter_v1.portz", json!(80), 400, UNKNOWN_FIELD as u64),
        // filter_bpf (extension): compiled by libpcap, bounded, never shell text
        c("simple", "filter_bpf", Some(json!(5)), 400, WRONG_TYPE as u64),
        c("simple", "filter_bpf", Some(json!("tcp port 80; rm -rf /")), 400, INVALID_VALUE as u64),
        c("simple", "filter_bpf", Some(json!("udp and (")), 400, INVALID_VALUE as u64),
        c("simple", "filter_bpf", Some(json!("x".repeat(5000))), 400, INVALID_VALUE as u64),
        c("simple", "filter_bpf", Some(json!("udp and dst port 53")), 200, 0),
    ]);
    v
}

#[tokio::test]
async fn every_field_is_validated_with_a_clear_error() {
    let api = api().await;
    let mut checked = 0;
    for (base, field, value, status, code) in cases() {
        let mut body = if base == "simple" { simple() } else { full() };
        let key = field.split('.').next().unwrap();
        match &value {
            None => {
                body.as_object_mut().unwrap().remove(key);
            }
            Some(v) => body[key] = v.clone(),
        }
        let case = format!("{base} {field}={value:?}");
        let (got_status, v) = api.create(&body).await;
        if status == 200 {
            assert_eq!(got_status, StatusCode::OK, "{case}: {v}");
            assert_eq!(v["success"], json!(true), "{case}");
            assert_eq!(v["errors"], json!([]), "{case}");
            let id = v["result"]["id"].as_str().unwrap();
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{case}: id {id}");
            assert_eq!(v["result"]["status"], json!("pending"), "{case}");
        } else if status == 403 {
            // Valid, but the bucket has not been validated for this account.
            assert_error(got_status, &v, status, code, "destination_conf", &case);
        } else {
            assert_error(got_status, &v, status, code, field, &case);
        }
        checked += 1;
    }
    assert!(checked > 60, "the table covers every field ({checked} cases)");
}

#[tokio::test]
async fn mixed_address_families_and_portless_protocols_are_refused() {
    let api = api().await;
    let mut body = simple();
    body["filter_v1"] = json!({"source_address": "10.0.0.1", "destination_address": "::1"});
    let (s, v) = api.create(&body).await;
    assert_error(s, &v, 400, 1005, "source_address", "mixed families");
    body["filter_v1"] = json!({"protocol": 1, "destination_port": 53});
    let (s, v) = api.create(&body).await;
    assert_error(s, &v, 400, 1005, "protocol", "icmp with ports");
}

#[tokio::test]
async fn malformed_bodies() {
    let api = api().await;
    for (body, what) in [("", "empty"), ("{", "truncated"), ("[1,2]", "array"), ("null", "null"), ("\"x\"", "string")] {
        let (s, v) = api.call("POST", "/client/v4/accounts/acct-a/pcaps", Some(TOKEN_A), Some(body)).await;
        assert_error(s, &v, 400, 1001, "request body", what);
    }
    let (s, v) = api.call("POST", "/client/v4/accounts/acct-a/pcaps/ownership", Some(TOKEN_A), Some("{}")).await;
    assert_error(s, &v, 400, 1002, "destination_conf", "ownership without destination");
    let (s, v) = api
        .call(
            "POST",
            "/client/v4/accounts/acct-a/pcaps/ownership/validate",
            Some(TOKEN_A),
            Some(r#"{"destination_conf":"s3://bucket-1"}"#),
        )
        .await;
    assert_error(s, &v, 400, 1002, "ownership_challenge", "validate without challenge");
    let (s, v) = api
        .call(
            "POST",
            "/client/v4/accounts/acct-a/pcaps/ownership/validate",
            Some(TOKEN_A),
            Some(r#"{"destination_conf":"s3://bucket-1","ownership_challenge":"abc"}"#),
        )
        .await;
    assert_error(s, &v, 404, 1101, "destination_conf", "validate before create");
    // A bucket that cannot be reached: 503 naming the field, never a 500.
    let (s, v) = api
        .call(
            "POST",
            "/client/v4/accounts/acct-a/pcaps/ownership",
            Some(TOKEN_A),
            Some(r#"{"destination_conf":"s3://bucket-1?endpoint=http://127.0.0.1:1"}"#),
        )
        .await;
    assert_error(s, &v, 503, 1501, "destination_conf", "unreachable bucket");
}

#[tokio::test]
async fn auth_routes_and_methods() {
    let api = api().await;
    let (s, v) = api.call("GET", "/client/v4/accounts/acct-a/pcaps", None, None).await;
    assert_error(s, &v, 401, 10000, "Authorization", "no token");
    let (s, v) = api.call("GET", "/client/v4/accounts/acct-a/pcaps", Some("nope-nope-nope-nope"), None).await;
    assert_error(s, &v, 401, 10000, "Authorization", "bad token");
    let (s, v) = api.call("GET", "/client/v4/nothing", Some(TOKEN_A), None).await;
    assert_error(s, &v, 404, 7003, "No route", "unknown path");
    let (s, v) = api.call("DELETE", "/client/v4/accounts/acct-a/pcaps", Some(TOKEN_A), None).await;
    assert_error(s, &v, 405, 7001, "Method", "wrong method");
    let (s, v) = api.call("GET", "/client/v4/accounts/acct-a/pcaps/not-an-id", Some(TOKEN_A), None).await;
    assert_error(s, &v, 404, 1100, "pcap_id", "malformed id");
    let (s, v) = api.call("GET", "/client/v4/accounts/acct-a/pcaps/ownership", Some(TOKEN_A), None).await;
    assert_eq!(s, StatusCode::OK, "ownership list wins over /{{pcap_id}}: {v}");
    assert_eq!(v["result"], json!([]));
    let (s, v) = api
        .call(
            "DELETE",
            "/client/v4/accounts/acct-a/pcaps/ownership/0123456789abcdef0123456789abcdef",
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_error(s, &v, 404, 1101, "ownership_id", "unknown ownership");
}

async fn wait_final(api: &Api, id: &str) -> Value {
    for _ in 0..100 {
        let (_, v) = api.call("GET", &format!("/client/v4/accounts/acct-a/pcaps/{id}"), Some(TOKEN_A), None).await;
        if v["result"]["status"] != json!("pending") {
            return v["result"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("capture {id} stayed pending");
}

#[tokio::test]
async fn accounts_are_isolated() {
    let api = api().await;
    let (_, created) = api.create(&simple()).await;
    let id = created["result"]["id"].as_str().unwrap().to_string();
    // No agent is connected: the capture fails with a reason, and is still A's alone.
    let done = wait_final(&api, &id).await;
    assert_eq!(done["status"], json!("failed"));
    assert!(done["error_message"].as_str().unwrap().contains("no agent"), "{done}");
    let a = "/client/v4/accounts/acct-a/pcaps";
    for (method, path) in [
        ("GET", a.to_string()),
        ("GET", format!("{a}/{id}")),
        ("GET", format!("{a}/{id}/download")),
        ("PUT", format!("{a}/{id}/stop")),
        ("POST", a.to_string()),
    ] {
        let (s, v) = api.call(method, &path, Some(TOKEN_B), Some(&simple().to_string())).await;
        assert_error(s, &v, 404, 1104, "account_id", &format!("B on {method} {path}"));
    }
    let b = "/client/v4/accounts/acct-b/pcaps";
    for (method, path) in
        [("GET", format!("{b}/{id}")), ("GET", format!("{b}/{id}/download")), ("PUT", format!("{b}/{id}/stop"))]
    {
        let (s, v) = api.call(method, &path, Some(TOKEN_B), None).await;
        assert_error(s, &v, 404, 1100, "pcap_id", &format!("B's own path {method} {path}"));
    }
    let (_, v) = api.call("GET", b, Some(TOKEN_B), None).await;
    assert_eq!(v["result"], json!([]), "B lists nothing of A's");
    let (_, v) = api.call("GET", a, Some(TOKEN_A), None).await;
    assert_eq!(v["result"].as_array().unwrap().len(), 1);
    assert_eq!(v["result_info"]["count"], json!(1));
    // A cannot download a failed capture; the reason is given.
    let (s, v) = api.call("GET", &format!("{a}/{id}/download"), Some(TOKEN_A), None).await;
    assert_error(s, &v, 409, 1102, "pcap_id", "download of a failed capture");
}

#[tokio::test]
async fn sample_rate_limit_is_per_account_and_after_validation() {
    let api = api_with(RateLimits::cloudflare()).await;
    let (s, _) = api.create(&simple()).await;
    assert_eq!(s, StatusCode::OK);
    let mut bad = simple();
    bad["time_limit"] = json!(0);
    let (s, v) = api.create(&bad).await;
    assert_error(s, &v, 400, 1004, "time_limit", "validation before the rate limit");
    let (s, v) = api.create(&simple()).await;
    assert_error(s, &v, 429, 1200, "type", "second sample within a minute");
    let (s, _) = api.call("POST", "/client/v4/accounts/acct-b/pcaps", Some(TOKEN_B), Some(&simple().to_string())).await;
    assert_eq!(s, StatusCode::OK, "another account is not limited");
}

#[tokio::test]
async fn the_web_page_is_served_with_a_strict_policy() {
    let api = api().await;
    let resp = api.router.clone().oneshot(Request::builder().uri("/").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-eval"), "{csp}");
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(html.contains(r#"<script src="/app.js"></script>"#));
    assert!(!html.contains("<script>"), "no inline script (the CSP would block it)");
    let resp =
        api.router.clone().oneshot(Request::builder().uri("/app.js").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let js = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    // It uses the same API the SDKs use, with the token as a Bearer header, never in a URL.
    assert!(js.contains("/client/v4/accounts/") && js.contains("Authorization") && js.contains("Bearer"));
    assert!(!js.contains("?token"), "the token never goes into a URL");
}
