//! `project sql`, `migrate` and `rebuild sql`, and the SQL projector task `standalone` runs.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::registry::Registry;
use sqlx::Executor;
use terra_eventlog::EventLog;
use terra_projector::RebuildOptions;
use terra_projector::{ProjectorConfig, ProjectorMetrics};
use terra_schema::{SqlError, SqlTarget};
use terra_sink_sql::SqlSink;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::settings::{self, Batches, Config, ObjectSettings, SqlSettings};
use crate::{serve, telemetry};

/// Connects to the SQL database and makes sure the tables are there: applies migrations when
/// `migrate`, else checks none is pending. A database that is not reachable yet is waited
/// for (with backoff) rather than a reason to exit.
pub(crate) async fn open_sql(
    sql: &SqlSettings,
    migrate: bool,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SqlTarget> {
    let target = SqlTarget::connect(&sql.config).context("setting sql")?;
    let mut delay = Duration::from_millis(500);
    loop {
        let result = if migrate {
            terra_schema::migrate(&target).await.map(|report| {
                if !report.applied.is_empty() {
                    tracing::info!(applied = ?report.applied, "applied migrations");
                }
            })
        } else {
            match terra_schema::pending(&target).await {
                Ok(pending) if pending.is_empty() => Ok(()),
                Ok(pending) => bail!(
                    "the SQL tables are missing migrations {pending:?}: run `terra-ingest migrate` or pass --migrate"
                ),
                Err(err) => Err(err),
            }
        };
        match result {
            Ok(()) => return Ok(target),
            Err(SqlError::Unavailable(why)) => {
                tracing::warn!(dialect = target.dialect().as_str(), error = %why, retry_in_ms = delay.as_millis() as u64, "database unavailable at start-up; waiting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => bail!("stopped while waiting for the database"),
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(err) => return Err(err).context("failed to prepare the SQL tables"),
        }
    }
}

/// Runs the SQL projector until `stopped`; sets `failed` when it stops on its own.
pub(crate) fn spawn_sql(
    batches: &Batches,
    target: SqlTarget,
    log: EventLog,
    metrics: ProjectorMetrics,
    stopped: watch::Receiver<bool>,
    failed: watch::Sender<bool>,
) -> JoinHandle<anyhow::Result<()>> {
    let mut config = ProjectorConfig::new(terra_sink_sql::SQL_GROUP);
    config.batch_size = batches.size;
    config.batch_wait = batches.wait;
    tracing::info!(dialect = target.dialect().as_str(), group = %config.group, "sql projector starting");
    tokio::spawn(supervise(
        "sql",
        config,
        log,
        SqlSink::new(target),
        metrics,
        stopped,
        failed,
    ))
}

/// Runs a projector until `stopped`, logs how it ended, and sets `failed` when it stopped on
/// its own (the process then shuts down, so the failure is seen).
async fn supervise<S: terra_projector::Sink>(
    name: &'static str,
    config: ProjectorConfig,
    log: EventLog,
    mut sink: S,
    metrics: ProjectorMetrics,
    stopped: watch::Receiver<bool>,
    failed: watch::Sender<bool>,
) -> anyhow::Result<()> {
    match terra_projector::run(&config, &log, &mut sink, &metrics, stopped, |_| {}).await {
        Ok(totals) => {
            tracing::info!(
                projector = name,
                records = totals.records,
                "projector stopped"
            );
            Ok(())
        }
        Err(err) => {
            tracing::error!(projector = name, error = %err, "projector failed");
            let _ = failed.send(true);
            Err(anyhow::anyhow!("{name} projector failed: {err}"))
        }
    }
}

/// Runs the object projector until `stopped`; sets `failed` when it stops on its own.
pub(crate) async fn spawn_objects(
    objects: &ObjectSettings,
    batches: &Batches,
    log: EventLog,
    metrics: ProjectorMetrics,
    stopped: watch::Receiver<bool>,
    failed: watch::Sender<bool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let store = terra_sink_objects::Store::open(&objects.store).context("setting objects")?;
    let pinger = match &objects.sqs {
        Some(sqs) => Some(terra_sink_objects::Pinger::connect(sqs).await),
        None => None,
    };
    let mut config = ProjectorConfig::new(terra_sink_objects::OBJECTS_GROUP);
    config.batch_size = batches.size;
    config.batch_wait = batches.wait;
    tracing::info!(store = store.kind(), sqs = pinger.is_some(), group = %config.group, "object projector starting");
    let sink = terra_sink_objects::ObjectSink::new(store, objects.sink.clone(), pinger);
    Ok(tokio::spawn(supervise(
        "object", config, log, sink, metrics, stopped, failed,
    )))
}

/// `terra-ingest project objects`.
pub(crate) async fn project_objects(config: Config) -> anyhow::Result<ExitCode> {
    // the object projector has no database: `sql.supabase` only presets the bucket here
    let objects = settings::resolve_objects(&config)?;
    let batches = settings::resolve_batches(&config)?;
    let log_settings = settings::resolve_log(&config)?;
    let traces = settings::resolve_telemetry(&config);
    let _telemetry = telemetry::init(traces.log_format, traces.otlp_endpoint.as_deref())?;
    let log = EventLog::open(&log_settings.url, &log_settings.kafka_properties)
        .await
        .context("failed to open the event log")?;
    let (stop, stopped) = watch::channel(false);
    let mut registry = Registry::with_prefix("terra_ingest");
    let metrics = ProjectorMetrics::register(&mut registry);
    let store = terra_sink_objects::Store::open(&objects.store)?;
    let http = start_health(
        config.projector.http_addr,
        registry,
        Readiness::Objects(store),
        stopped.clone(),
    )
    .await?;
    let (failed, projector_failed) = watch::channel(false);
    let projector = spawn_objects(&objects, &batches, log, metrics, stopped, failed).await?;
    until_stopped(projector, http, stop, projector_failed).await
}

/// `terra-ingest project sql`.
pub(crate) async fn project_sql(config: Config) -> anyhow::Result<ExitCode> {
    let sql = settings::resolve_sql(&config)?;
    let batches = settings::resolve_batches(&config)?;
    let log_settings = settings::resolve_log(&config)?;
    let traces = settings::resolve_telemetry(&config);
    let _telemetry = telemetry::init(traces.log_format, traces.otlp_endpoint.as_deref())?;
    let log = EventLog::open(&log_settings.url, &log_settings.kafka_properties)
        .await
        .context("failed to open the event log")?;
    let (stop, stopped) = watch::channel(false);
    let mut registry = Registry::with_prefix("terra_ingest");
    let metrics = ProjectorMetrics::register(&mut registry);
    let target = open_sql(&sql, sql.migrate, stopped.clone()).await?;
    let http = start_health(
        config.projector.http_addr,
        registry,
        Readiness::Sql(target.clone()),
        stopped.clone(),
    )
    .await?;
    let (failed, projector_failed) = watch::channel(false);
    let projector = spawn_sql(&batches, target, log, metrics, stopped, failed);
    until_stopped(projector, http, stop, projector_failed).await
}

/// Serves `/healthz`, `/readyz`, `/metrics` of a projector on `addr` until `stopped`.
async fn start_health(
    addr: std::net::SocketAddr,
    registry: Registry,
    readiness: Readiness,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr} (--http-addr)"))?;
    tracing::info!(addr = %listener.local_addr()?, "projector http listening");
    Ok(tokio::spawn(serve_health(
        listener,
        Arc::new(registry),
        readiness,
        stopped,
    )))
}

/// Waits for SIGTERM/Ctrl-C (or the projector failing), then stops and drains.
async fn until_stopped(
    projector: JoinHandle<anyhow::Result<()>>,
    http: JoinHandle<std::io::Result<()>>,
    stop: watch::Sender<bool>,
    mut projector_failed: watch::Receiver<bool>,
) -> anyhow::Result<ExitCode> {
    tokio::select! {
        () = serve::shutdown_signal() => {}
        _ = projector_failed.changed() => {}
    }
    let _ = stop.send(true);
    let result = projector.await.context("projector task panicked")?;
    let _ = http.await;
    result?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone)]
struct Health {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// What `/readyz` checks.
#[derive(Clone)]
enum Readiness {
    Sql(SqlTarget),
    Objects(terra_sink_objects::Store),
}

/// `/healthz` (alive), `/readyz` (database reachable), `/metrics` (Prometheus text).
async fn serve_health(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Health {
            registry,
            readiness,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    let check = async {
        match &health.readiness {
            Readiness::Sql(target) => target
                .pool()
                .execute("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| terra_schema::describe_error(&e)),
            Readiness::Objects(store) => {
                // any answer from the store but a failure to reach it will do
                let probe = object_store::path::Path::from("_readyz-probe");
                match store.object_store().head(&probe).await {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {err}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: check timed out\n".into(),
        ),
    }
}

async fn metrics(
    State(health): State<Health>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &health.registry);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

/// `terra-ingest migrate`.
pub(crate) async fn migrate(config: Config) -> anyhow::Result<ExitCode> {
    let sql = settings::resolve_sql(&config)?;
    let _telemetry = telemetry::init(config.telemetry.log_format, None)?;
    let target = SqlTarget::connect(&sql.config)?;
    let report = terra_schema::migrate(&target)
        .await
        .context("migration failed")?;
    for name in &report.applied {
        println!("applied {name}");
    }
    println!(
        "{} migration(s) applied, {} already present ({})",
        report.applied.len(),
        report.already,
        target.dialect().as_str()
    );
    Ok(ExitCode::SUCCESS)
}

/// `terra-ingest rebuild sql`.
pub(crate) async fn rebuild_sql(
    config: Config,
    keep_old: bool,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let sql = settings::resolve_sql(&config)?;
    let batches = settings::resolve_batches(&config)?;
    let log_settings = settings::resolve_log(&config)?;
    let _telemetry = telemetry::init(config.telemetry.log_format, None)?;
    let log = EventLog::open(&log_settings.url, &log_settings.kafka_properties)
        .await
        .context("failed to open the event log (an embedded log must not be open in a running terra-ingest)")?;
    let target = SqlTarget::connect(&sql.config)?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        serve::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let options = RebuildOptions {
        batch_size: batches.size.max(500),
        keep_old,
        show_progress: !quiet,
    };
    let report = terra_projector::rebuild(
        &SqlSink::new(target.clone()),
        &log,
        &options,
        &ProjectorMetrics::unregistered(),
        stopped,
    )
    .await
    .context("rebuild failed")?;
    println!(
        "rebuilt {} log records in {:.1} s ({:.0} records/s) and swapped the new tables in{}",
        report.records,
        report.seconds,
        report.records as f64 / report.seconds.max(0.001),
        report
            .kept_old_prefix
            .map(|p| format!("; the old tables are kept as {p}*"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
