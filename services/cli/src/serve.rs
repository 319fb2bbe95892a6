//! `standalone` and `ingress`: resolve settings, open the log, serve until SIGTERM/Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use terra_eventlog::EventLog;
use terra_ingress::Metrics;

use crate::cli::{LogFormat, ServeArgs};
use crate::{settings, telemetry};

pub(crate) async fn run(
    config: Option<PathBuf>,
    log_format: Option<LogFormat>,
    args: ServeArgs,
    standalone: bool,
) -> anyhow::Result<ExitCode> {
    let file = settings::read_file(config.as_deref())?;
    let settings = settings::resolve(file, args, log_format, standalone)?;
    let _telemetry = telemetry::init(settings.log_format, settings.otlp_endpoint.as_deref())?;
    if let Some(path) = &settings.generated_secret {
        tracing::info!(path = %path.display(), "the default source's signing secret is in this file: paste its value into Terra's dashboard, or sign test deliveries with `terra-ingest send`");
    }
    let log = EventLog::open(&settings.log, &settings.kafka_properties)
        .await
        .context("failed to open the event log")?;
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("failed to listen on {} (--http-addr)", settings.http_addr))?;
    tracing::info!(
        mode = if standalone { "standalone" } else { "ingress" },
        log = log.backend(),
        sources = settings.ingress.sources.len(),
        data_dir = %settings.data_dir.display(),
        "starting"
    );
    terra_ingress::run(
        settings.ingress,
        log.clone(),
        Metrics::new(),
        listener,
        shutdown_signal(),
    )
    .await
    .context("ingress server failed")?;
    if let EventLog::Kafka(kafka) = &log {
        kafka.flush(Duration::from_secs(5));
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
