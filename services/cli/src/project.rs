//! `project sql`, `migrate` and `rebuild sql`, and the SQL projector task `standalone` runs.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use anyhow::{Context, bail};
use prometheus_client::registry::Registry;
use sqlx::Executor;
use terra_eventlog::EventLog;
use terra_projector::RebuildOptions;
use terra_projector::{PlanReader, ProjectorConfig, ProjectorMetrics};
use terra_runtime::{Backoff, CancellationToken, LagBound, Readiness, Retry};
use terra_schema::{SqlError, SqlTarget};
use terra_sink_sql::SqlSink;
use tokio::task::JoinHandle;

use crate::settings::{self, Batches, Config, ObjectSettings, SqlSettings};
use crate::telemetry;

/// Connects to the SQL database and makes sure the tables are there: applies migrations when
/// `migrate`, else checks none is pending. A database that is not reachable yet is waited
/// for (with backoff) rather than a reason to exit.
pub(crate) async fn open_sql(
    sql: &SqlSettings,
    migrate: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<SqlTarget> {
    let target = SqlTarget::connect(&sql.config).context("setting sql")?;
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let what = format!("{} database at start-up", target.dialect().as_str());
    let mut retry = Retry::new(backoff, shutdown, &what);
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
            Ok(()) => return Ok(retry.done(target)),
            Err(SqlError::Unavailable(why)) => {
                if !retry.wait(&why).await {
                    bail!("stopped while waiting for the database");
                }
            }
            Err(err) => return Err(err).context("failed to prepare the SQL tables"),
        }
    }
}

/// Runs the SQL projector until `shutdown` is cancelled; cancels it when the projector
/// stops on its own.
pub(crate) fn spawn_sql(
    batches: &Batches,
    lag_bound: Option<LagBound>,
    plans: Option<PlanReader>,
    target: SqlTarget,
    log: EventLog,
    metrics: ProjectorMetrics,
    shutdown: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    let mut config = batches.projector_config(terra_sink_sql::SQL_GROUP);
    config.lag_bound = lag_bound;
    config.plans = plans;
    tracing::info!(dialect = target.dialect().as_str(), group = %config.group, "sql projector starting");
    tokio::spawn(supervise(
        "sql",
        config,
        log,
        SqlSink::new(target),
        metrics,
        shutdown,
    ))
}

/// Runs a projector until `shutdown` is cancelled, logs how it ended, and cancels `shutdown`
/// when it stopped on its own (the process then shuts down, so the failure is seen).
pub(crate) async fn supervise<S: terra_projector::Sink>(
    name: &'static str,
    config: ProjectorConfig,
    log: EventLog,
    mut sink: S,
    metrics: ProjectorMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let run = terra_projector::run(&config, &log, &mut sink, &metrics, shutdown.clone(), |_| {});
    match run.await {
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
            shutdown.cancel();
            Err(anyhow::anyhow!("{name} projector failed: {err}"))
        }
    }
}

/// Runs the object projector until `shutdown` is cancelled; cancels it when the projector
/// stops on its own. It shares the SQL projector's batch settings.
pub(crate) async fn spawn_objects(
    objects: &ObjectSettings,
    batches: &Batches,
    lag_bound: Option<LagBound>,
    plans: Option<PlanReader>,
    log: EventLog,
    metrics: ProjectorMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let store = terra_sink_objects::Store::open(&objects.store).context("setting objects")?;
    let pinger = match &objects.sqs {
        Some(sqs) => Some(terra_sink_objects::Pinger::connect(sqs).await),
        None => None,
    };
    let mut config = batches.projector_config(terra_sink_objects::OBJECTS_GROUP);
    config.lag_bound = lag_bound;
    config.plans = plans;
    tracing::info!(store = store.kind(), sqs = pinger.is_some(), group = %config.group, "object projector starting");
    let sink = terra_sink_objects::ObjectSink::new(store, objects.sink.clone(), pinger);
    Ok(tokio::spawn(supervise(
        "object", config, log, sink, metrics, shutdown,
    )))
}

/// `terra-ingest project objects`.
pub(crate) async fn project_objects(config: Config) -> anyhow::Result<ExitCode> {
    // the object projector has no database: `sql.supabase` only presets the bucket here
    let objects = settings::resolve_objects(&config)?;
    let batches = settings::resolve_batches(&config)?;
    let log_settings = settings::resolve_log(&config)?;
    let traces = settings::resolve_telemetry(&config);
    let _telemetry = telemetry::service(traces.log_format, traces.otlp_endpoint.as_deref())?;
    let log = log_settings
        .open()
        .await
        .context("failed to open the event log")?;
    let shutdown = CancellationToken::new();
    terra_runtime::shutdown::cancel_on_signal(&shutdown);
    let mut registry = Registry::with_prefix("terra_ingest");
    let metrics = ProjectorMetrics::register(&mut registry);
    let store = terra_sink_objects::Store::open(&objects.store)?;
    let readiness = StoreReadiness {
        store,
        metrics: metrics.clone(),
    };
    let http = start_ops(
        config.projector.http_addr,
        registry,
        Arc::new(readiness),
        shutdown.clone(),
    )
    .await?;
    let projector = spawn_objects(
        &objects,
        &batches,
        None,
        None,
        log,
        metrics,
        shutdown.clone(),
    )
    .await?;
    until_stopped(projector, http, shutdown).await
}

/// `terra-ingest project sql`.
pub(crate) async fn project_sql(config: Config) -> anyhow::Result<ExitCode> {
    let sql = settings::resolve_sql(&config)?;
    let batches = settings::resolve_batches(&config)?;
    let log_settings = settings::resolve_log(&config)?;
    let traces = settings::resolve_telemetry(&config);
    let _telemetry = telemetry::service(traces.log_format, traces.otlp_endpoint.as_deref())?;
    let log = log_settings
        .open()
        .await
        .context("failed to open the event log")?;
    let shutdown = CancellationToken::new();
    terra_runtime::shutdown::cancel_on_signal(&shutdown);
    let mut registry = Registry::with_prefix("terra_ingest");
    let metrics = ProjectorMetrics::register(&mut registry);
    let target = open_sql(&sql, sql.migrate, &shutdown).await?;
    let http = start_ops(
        config.projector.http_addr,
        registry,
        Arc::new(SqlReadiness(target.clone())),
        shutdown.clone(),
    )
    .await?;
    let projector = spawn_sql(&batches, None, None, target, log, metrics, shutdown.clone());
    until_stopped(projector, http, shutdown).await
}

/// Serves a projector's operations router (`/healthz`, `/readyz`, `/metrics`) on `addr`
/// until `shutdown` is cancelled.
pub(crate) async fn start_ops(
    addr: std::net::SocketAddr,
    registry: Registry,
    readiness: Arc<dyn Readiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr} (--http-addr)"))?;
    tracing::info!(addr = %listener.local_addr()?, "projector http listening");
    let router = terra_runtime::ops::router(Arc::new(registry), readiness);
    Ok(tokio::spawn(terra_runtime::ops::serve(
        listener, router, shutdown,
    )))
}

/// Waits for SIGTERM/Ctrl-C or the projector failing (both cancel `shutdown`), then drains.
pub(crate) async fn until_stopped(
    projector: JoinHandle<anyhow::Result<()>>,
    http: JoinHandle<std::io::Result<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    shutdown.cancelled().await;
    let result = projector.await.context("projector task panicked")?;
    let _ = http.await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `/readyz` of the SQL projector: the database answers.
pub(crate) struct SqlReadiness(pub(crate) SqlTarget);

impl Readiness for SqlReadiness {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.0
                .pool()
                .execute("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| terra_schema::describe_error(&e))
        })
    }
}

/// `/readyz` of the object projector: the store does not refuse the projector's writes (a
/// refusal that will not pass by itself: credentials, permissions, a missing bucket, a
/// setting it does not accept; see `terra_sink_objects`' `errors`), and it answers (any
/// answer but a failure to reach it will do).
struct StoreReadiness {
    store: terra_sink_objects::Store,
    metrics: ProjectorMetrics,
}

impl Readiness for StoreReadiness {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            if let Some(cause) = self.metrics.refusal(terra_sink_objects::OBJECTS_GROUP) {
                return Err(format!("the object store refuses writes: {cause}"));
            }
            let probe = object_store::path::Path::from("_readyz-probe");
            match self.store.object_store().head(&probe).await {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
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

/// `terra-ingest log repair`.
pub(crate) fn repair_log(config: Config) -> anyhow::Result<ExitCode> {
    let log_settings = settings::resolve_log(&config)?;
    let _telemetry = telemetry::init(config.telemetry.log_format, None)?;
    let terra_eventlog::LogUrl::Embedded { dir, .. } = &log_settings.url else {
        anyhow::bail!(
            "log repair works on an embedded log (--log embedded:PATH); a Kafka topic is repaired by its brokers"
        );
    };
    let report = terra_eventlog::embedded::repair(dir)
        .with_context(|| format!("failed to repair the embedded log in {}", dir.display()))?;
    println!(
        "checked {} segment(s): kept {} intact record(s); next offsets {:?}",
        report.segments, report.records_kept, report.next_offsets
    );
    for (path, skipped) in &report.repaired {
        let bytes: u64 = skipped.iter().map(|(from, to)| to - from).sum();
        println!(
            "rewrote {} without {bytes} damaged byte(s) at {skipped:?}; the damaged file is kept as {}.damaged",
            path.display(),
            path.display()
        );
    }
    for (partition, from, to) in &report.lost {
        println!(
            "partition {partition}: offsets {from}..{to} hold no intact record (readers skip them, naming each)"
        );
    }
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
    let log = log_settings.open().await.context(
        "failed to open the event log (an embedded log must not be open in a running terra-ingest)",
    )?;
    let target = SqlTarget::connect(&sql.config)?;
    let shutdown = CancellationToken::new();
    terra_runtime::shutdown::cancel_on_signal(&shutdown);
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
        shutdown,
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
