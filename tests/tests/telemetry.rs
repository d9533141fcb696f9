//! Traces leave through tracing-opentelemetry: `edgecap-coordinator --otlp-endpoint` sends its
//! spans to an OTLP/gRPC collector (a real one from `opentelemetry-proto`, run here on
//! loopback), tagged with the service name; an API request and the sample capture it starts
//! are there, and nothing is lost at shutdown (the batch is flushed on SIGTERM; the default
//! batch delay is 5 s, so without the flush the spans would not have left yet).

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::time::Duration;

use edgecap_e2e::otlp::Collector;
use edgecap_e2e::{Proc, api_call, bin, free_port, wait_for};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_exports_spans_over_otlp() {
    let (collector, otlp, server) = Collector::start().await;

    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "otel").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let api_port = free_port();
    let token = "otel-token-0123456789abcdef";
    let log = dir.path().join("coordinator.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut coordinator = Proc {
        child: std::process::Command::new(bin("edgecap-coordinator"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--pki-dir")
            .arg(&pki)
            .args(["--api-listen", &format!("127.0.0.1:{api_port}"), "--grpc-listen", "127.0.0.1:0"])
            .args(["--token", &format!("acct:{token}"), "--no-rate-limits", "--otlp-endpoint", &otlp])
            .args(["--unscoped-accounts", "unrestricted"])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
        log,
    };
    wait_for("the API", Duration::from_secs(30), || {
        coordinator.assert_running("coordinator");
        std::net::TcpStream::connect(("127.0.0.1", api_port)).ok()
    });
    let url = format!("http://127.0.0.1:{api_port}/client/v4/accounts/acct/pcaps");
    let body = json!({"system": "magic-transit", "type": "simple", "time_limit": 10, "packet_limit": 10});
    let (status, created) = api_call("POST", &url, token, Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();
    // The (agentless) capture fails after waiting for an agent; then SIGTERM, which must
    // flush the batch.
    for _ in 0..60 {
        let (_, v) = api_call("GET", &format!("{url}/{id}"), token, None).await;
        if v["result"]["status"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &coordinator.child.id().to_string()]).status();
    let status =
        wait_for("the coordinator to exit", Duration::from_secs(20), || coordinator.child.try_wait().ok().flatten());
    assert!(status.success(), "{}", coordinator.log_text());

    let spans = collector.spans();
    server.abort();
    assert!(spans.iter().all(|s| s.service == "edgecap-coordinator"), "{spans:?}");
    let api = spans
        .iter()
        .find(|s| s.name == "api" && s.attrs.iter().any(|a| a == "route=/client/v4/accounts/{account_id}/pcaps"))
        .unwrap_or_else(|| panic!("the API request's span: {spans:?}\n{}", coordinator.log_text()));
    assert!(api.attrs.iter().any(|a| a == "method=POST") && api.attrs.iter().any(|a| a == "status=200"), "{api:?}");
    assert!(
        spans.iter().any(|s| s.name == "sample_capture" && s.attrs.iter().any(|a| a == &format!("capture={id}"))),
        "the capture's span: {spans:?}"
    );
}
