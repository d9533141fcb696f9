//! A real OTLP/gRPC trace collector (the `opentelemetry-proto` service) on loopback, for
//! tests of what the binaries export.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// One exported span, flattened.
#[derive(Clone, Debug)]
pub struct SeenSpan {
    /// `service.name` of the process that exported it.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Attributes as `key=value`.
    pub attrs: Vec<String>,
    /// Trace id, hex.
    pub trace_id: String,
    /// Span id, hex.
    pub span_id: String,
    /// The parent span's id, hex; empty for a root span.
    pub parent_id: String,
    /// Everything the span carried (attributes, events, status), as text, for searching.
    pub raw: String,
}

/// Collects every span exported to it.
#[derive(Default, Clone)]
pub struct Collector {
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
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
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
                spans.push(SeenSpan {
                    service: service.clone(),
                    name: span.name.clone(),
                    attrs,
                    trace_id: edgecap_common::hex(&span.trace_id),
                    span_id: edgecap_common::hex(&span.span_id),
                    parent_id: edgecap_common::hex(&span.parent_span_id),
                    raw: format!("{span:?}"),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Starts a collector on a free loopback port; returns it, its endpoint
    /// (`http://127.0.0.1:PORT`), and the server's task (abort it when done).
    pub async fn start() -> (Self, String, tokio::task::JoinHandle<()>) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("collector address"));
        let service = TraceServiceServer::new(collector.clone());
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        (collector, endpoint, server)
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<SeenSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
