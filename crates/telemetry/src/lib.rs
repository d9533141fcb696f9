//! Logs and traces for the edgecap binaries, set up in one place.
//!
//! Logs go to stderr/stdout (`RUST_LOG` filters them). With an OTLP endpoint
//! (`--otlp-endpoint http://collector:4317`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`),
//! spans also leave through `tracing-opentelemetry` to an OpenTelemetry collector over gRPC,
//! batched, tagged with `service.name`. The filter for exported spans is the same as for logs
//! (the exporter's own h2/tonic/hyper chatter is filtered out).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Keeps the exporter alive; flushes what is still batched when dropped (or on
/// [`Telemetry::shutdown`]).
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter. Runs the (blocking) flush on its own thread: on a Tokio
    /// runtime thread it would wait for the very runtime that must send the spans.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = std::thread::spawn(move || {
                if let Err(error) = provider.shutdown() {
                    eprintln!("trace export: shutdown: {error}");
                }
            })
            .join();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global subscriber: logs (to stderr when `stderr`), plus OTLP trace export when
/// `otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is set. `default_filter` applies when
/// `RUST_LOG` is not set. Must be called inside a Tokio runtime when exporting.
pub fn init(
    service: &str,
    otlp_endpoint: Option<&str>,
    default_filter: &str,
    stderr: bool,
) -> anyhow::Result<Telemetry> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| default_filter.into())
            // The exporter's own transport must not trace itself.
            .add_directive("h2=warn".parse().expect("static directive"))
            .add_directive("hyper=warn".parse().expect("static directive"))
            .add_directive("tonic=info".parse().expect("static directive"))
            .add_directive("opentelemetry=warn".parse().expect("static directive"))
    };
    // Colours only on a terminal: logs written to files and collectors stay plain text.
    use std::io::IsTerminal as _;
    let fmt = if stderr {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()).boxed()
    };
    let endpoint = otlp_endpoint.map(str::to_string).or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok());
    let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) else {
        tracing_subscriber::registry().with(fmt.with_filter(filter())).try_init()?;
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone()).build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service.to_string());
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter()))
        .try_init()?;
    tracing::info!(%endpoint, "exporting traces over OTLP");
    Ok(Telemetry { provider: Some(provider) })
}

/// The W3C `traceparent` of the current span, to carry a trace to another process (in a
/// wire message, or a record in the state store); empty when no trace is being recorded.
pub fn traceparent() -> String {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return String::new();
    }
    format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
}

/// Makes `span` (not yet entered) a child of the remote span `traceparent` names, so its
/// work is part of that trace. An empty or malformed `traceparent` leaves it alone (a new
/// trace, as before).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let parts: Vec<&str> = traceparent.split('-').collect();
    let [version, trace, parent, flags] = parts[..] else { return };
    if version != "00" || trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
        return;
    }
    let (Ok(trace), Ok(parent), Ok(flags)) =
        (TraceId::from_hex(trace), SpanId::from_hex(parent), u8::from_str_radix(flags, 16))
    else {
        return;
    };
    let context = SpanContext::new(trace, parent, TraceFlags::new(flags), true, TraceState::default());
    if !context.is_valid() {
        return;
    }
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
}

#[cfg(test)]
mod tests {
    #[test]
    fn malformed_traceparents_are_ignored_and_none_is_made_without_a_trace() {
        let span = tracing::info_span!("t");
        for bad in ["", "00-xyz", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "00-0-0-0"] {
            super::continue_trace(&span, bad);
        }
        assert_eq!(super::traceparent(), "", "no subscriber records traces here");
    }
}
