//! Traces leave through tracing-opentelemetry: `edgecap-coordinator --otlp-endpoint` sends its
//! spans to an OTLP/gRPC collector (a real one from `opentelemetry-proto`, run here on
//! loopback), tagged with the service name; an API request and the sample capture it starts
//! are there, and nothing is lost at shutdown (the batch is flushed on SIGTERM; the default
//! batch delay is 5 s, so without the flush the spans would not have left yet).

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecap_e2e::{Proc, api_call, bin, free_port, wait_for};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::json;

/// (service.name, span name, attributes as "key=value")
type SeenSpan = (String, String, Vec<String>);

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<SeenSpan>>>,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let attrs = span.attributes.iter().map(|a| format!("{}={}", a.key, text(&a.value))).collect();
                spans.push((service.clone(), span.name, attrs));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_exports_spans_over_otlp() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

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

    let spans = collector.spans.lock().unwrap().clone();
    server.abort();
    assert!(spans.iter().all(|(service, _, _)| service == "edgecap-coordinator"), "{spans:?}");
    let api = spans
        .iter()
        .find(|(_, name, attrs)| {
            name == "api" && attrs.iter().any(|a| a == "route=/client/v4/accounts/{account_id}/pcaps")
        })
        .unwrap_or_else(|| panic!("the API request's span: {spans:?}\n{}", coordinator.log_text()));
    assert!(api.2.iter().any(|a| a == "method=POST") && api.2.iter().any(|a| a == "status=200"), "{api:?}");
    assert!(
        spans
            .iter()
            .any(|(_, name, attrs)| name == "sample_capture" && attrs.iter().any(|a| a == &format!("capture={id}"))),
        "the capture's span: {spans:?}"
    );
}
