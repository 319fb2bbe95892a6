//! Logs and traces: `tracing` with an fmt layer (text or JSON) and, when an OTLP endpoint is
//! configured, an OpenTelemetry layer exporting spans. Without one, no spans are built (they
//! cost more than the rest of a request); the ingress still writes a W3C `traceparent` into
//! every log record, continuing the caller's trace when it sent one.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::LogFormat;

/// Flushes and stops the exporter when dropped, and waits for a service's queued log lines.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
    _lines: Option<crate::log_lines::Flusher>,
}

/// A one-shot command's logs: each line written to stdout as it is made, in order with
/// what the command prints.
pub(crate) fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    install(format, otlp_endpoint, false)
}

/// A long-running service's logs: lines written to stdout by one thread, many per `write`
/// under load (`crate::log_lines`).
pub(crate) fn service(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    install(format, otlp_endpoint, true)
}

fn install(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    service: bool,
) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let mut provider = None;
    if let Some(endpoint) = otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| {
                anyhow::anyhow!(
                    "setting {}: {e}",
                    crate::settings::setting("telemetry.otlp_endpoint")
                )
            })?;
        provider = Some(
            SdkTracerProvider::builder()
                .with_resource(
                    Resource::builder()
                        .with_service_name("terra-ingest")
                        .build(),
                )
                .with_batch_exporter(exporter)
                .build(),
        );
    }
    // spans are exported whatever RUST_LOG says: a quiet log level must not cut traces
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("terra-ingest"))
            .with_filter(LevelFilter::INFO)
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(otel);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, lines) = if service {
        let (lines, flusher) = crate::log_lines::start(std::io::stdout())
            .map_err(|e| anyhow::anyhow!("failed to start the log writer: {e}"))?;
        (BoxMakeWriter::new(lines), Some(flusher))
    } else {
        (BoxMakeWriter::new(std::io::stdout), None)
    };
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .json()
                    .flatten_event(true)
                    .with_filter(filter),
            )
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("failed to install the log subscriber: {e}"))?;
    Ok(Telemetry {
        provider,
        _lines: lines,
    })
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown();
        }
    }
}
