//! The API's answers to who is calling and what they may reach: authentication, routes and
//! methods, account isolation, rate limits, the web page's headers, and destinations on
//! internal addresses.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use edgecap_coordinator::RateLimits;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

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
