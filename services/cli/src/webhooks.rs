//! `project webhooks`, and the webhook destination `standalone` runs when endpoints are
//! configured: the fan-out (a projector of the log, group `webhooks`) and the dispatcher,
//! both over the same SQL database.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use prometheus_client::registry::Registry;
use terra_eventlog::EventLog;
use terra_projector::ProjectorMetrics;
use terra_runtime::{Backoff, CancellationToken, Retry};
use terra_schema::{SqlError, SqlTarget, TableSet};
use terra_sink_webhooks::address::AddressPolicy;
use terra_sink_webhooks::send::Sender;
use terra_sink_webhooks::{FanOutSink, Shared, WebhookMetrics, WebhookSettings};
use tokio::task::JoinHandle;

use crate::project::{self, SqlReadiness};
use crate::settings::{self, Batches, Config};
use crate::telemetry;

/// Connects to the database and applies the webhook tables' migrations (they are
/// terra-ingest's own: always applied), waiting out a database not up yet.
pub(crate) async fn open_webhook_tables(
    sql: &settings::SqlSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<SqlTarget> {
    let target = SqlTarget::connect(&sql.config).context("setting sql")?;
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let what = format!("{} database at start-up", target.dialect().as_str());
    let mut retry = Retry::new(backoff, shutdown, &what);
    loop {
        match terra_schema::migrate_set(&target, TableSet::Webhooks).await {
            Ok(report) => {
                if !report.applied.is_empty() {
                    tracing::info!(applied = ?report.applied, "applied webhook table migrations");
                }
                return Ok(retry.done(target));
            }
            Err(SqlError::Unavailable(why)) => {
                if !retry.wait(&why).await {
                    bail!("stopped while waiting for the database");
                }
            }
            Err(err) => return Err(err).context("failed to prepare the webhook tables"),
        }
    }
}

/// Runs the fan-out and the dispatcher until `shutdown`; cancels it when either stops on its
/// own.
pub(crate) fn spawn_webhooks(
    settings: WebhookSettings,
    batches: &Batches,
    target: SqlTarget,
    log: EventLog,
    projector_metrics: ProjectorMetrics,
    metrics: WebhookMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let sender = Sender::new(AddressPolicy::new(settings.allow_cidrs.clone()))
        .map_err(|e| anyhow::anyhow!("failed to set up the webhook HTTP client: {e}"))?;
    let settings = Arc::new(settings);
    let shared = Shared::new(&settings);
    let config = batches.projector_config(terra_sink_webhooks::WEBHOOKS_GROUP);
    tracing::info!(
        dialect = target.dialect().as_str(),
        endpoints = settings.endpoints.len(),
        "webhook destination starting"
    );
    // the dispatcher first: the fan-out waits for it to start
    let dispatcher = tokio::spawn(terra_sink_webhooks::dispatch::run(
        target.clone(),
        settings.clone(),
        sender,
        metrics.clone(),
        shared.clone(),
        shutdown.clone(),
    ));
    let sink = FanOutSink::new(target, settings, shared, metrics);
    let fan_out = tokio::spawn(project::supervise(
        "webhook",
        config,
        log,
        sink,
        projector_metrics,
        shutdown.clone(),
    ));
    Ok(tokio::spawn(async move {
        let fanned = fan_out.await.context("webhook fan-out panicked")?;
        let dispatched = dispatcher.await.context("webhook dispatcher panicked")?;
        if let Err(err) = &dispatched {
            tracing::error!(error = %err, "webhook dispatcher failed");
            shutdown.cancel();
        }
        fanned?;
        dispatched.map_err(|e| anyhow::anyhow!("webhook dispatcher failed: {e}"))
    }))
}

/// `terra-ingest project webhooks`.
pub(crate) async fn project_webhooks(config: Config) -> anyhow::Result<ExitCode> {
    let sql = settings::resolve_sql(&config)?;
    let batches = settings::resolve_batches(&config)?;
    let log_settings = settings::resolve_log(&config)?;
    let Some(webhooks) = settings::resolve_webhooks(&config)? else {
        bail!(
            "no webhook endpoint is configured: give {} and {}, or [[webhooks.endpoints]] in the config file",
            settings::setting("webhooks.url"),
            settings::setting("webhooks.secret_file")
        );
    };
    let traces = settings::resolve_telemetry(&config);
    let _telemetry = telemetry::service(traces.log_format, traces.otlp_endpoint.as_deref())?;
    let log = log_settings
        .open()
        .await
        .context("failed to open the event log")?;
    let shutdown = CancellationToken::new();
    terra_runtime::shutdown::cancel_on_signal(&shutdown);
    let mut registry = Registry::with_prefix("terra_ingest");
    let projector_metrics = ProjectorMetrics::register(&mut registry);
    let metrics = WebhookMetrics::register(&mut registry);
    let target = open_webhook_tables(&sql, &shutdown).await?;
    let http = project::start_ops(
        config.projector.http_addr,
        registry,
        Arc::new(SqlReadiness(target.clone())),
        shutdown.clone(),
    )
    .await?;
    let task = spawn_webhooks(
        webhooks,
        &batches,
        target,
        log,
        projector_metrics,
        metrics,
        shutdown.clone(),
    )?;
    project::until_stopped(task, http, shutdown).await
}
