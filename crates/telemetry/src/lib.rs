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
