//! `standalone` and `ingress`: resolve settings, open the log, serve until SIGTERM/Ctrl-C.
//! `standalone` also runs the SQL and object projectors in the same process.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use terra_eventlog::EventLog;
use terra_ingress::Metrics;
use terra_projector::ProjectorMetrics;
use terra_runtime::CancellationToken;

use crate::settings::{self, Config};
use crate::{project, query, telemetry};

/// Runs the ingress; `standalone`, the SQL and object projectors and the query service too.
pub(crate) async fn run(config: Config, standalone: bool) -> anyhow::Result<ExitCode> {
    let projection_settings = if standalone {
        let sql = settings::resolve_sql(&config)?;
        let batches = settings::resolve_batches(&config)?;
        let objects = settings::resolve_objects(&config)?;
        let query = settings::resolve_query(&config)?;
        let webhooks = settings::resolve_webhooks(&config)?;
        Some((sql, batches, objects, query, webhooks))
    } else {
        None
    };
    let mut settings = settings::resolve_ingress(&config, standalone)?;
    let log_settings = settings::resolve_log(&config)?;
    let traces = settings::resolve_telemetry(&config);
    let _telemetry = telemetry::service(traces.log_format, traces.otlp_endpoint.as_deref())?;
    if standalone {
        // standalone keeps everything in the data dir: 0700, made so or tightened
        settings::private_data_dir(&config.data_dir, true)?;
    }
    if let Some(path) = &settings.generated_secret {
        tracing::info!(path = %path.display(), "the default source's signing secret is in this file: paste its value into Terra's dashboard, or sign test deliveries with `terra-ingest send`");
    }
    let log = log_settings
        .open()
        .await
        .context("failed to open the event log")?;
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("failed to listen on {} (--http-addr)", settings.http_addr))?;
    let ops_listener = match settings.ops_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("failed to listen on {addr} (--ops-addr)"))?,
        ),
        None => None,
    };
    // standalone on the embedded log: the ingress holds webhooks while a projection is more
    // than `projector.max_lag` records behind (a Kafka log is read by other consumers too
    // and its lag is a broker query: not bounded here)
    let lag_bound = match &projection_settings {
        Some((_, batches, ..)) if batches.max_lag > 0 && matches!(log, EventLog::Embedded(_)) => {
            Some(terra_runtime::LagBound::new(
                batches.max_lag,
                PROJECTION_HOLD,
            ))
        }
        _ => None,
    };
    settings.ingress.lag_bound = lag_bound.clone();
    let mut projector_metrics = None;
    let mut webhook_metrics = None;
    let metrics = Metrics::with_extra(|registry| {
        projector_metrics = Some(ProjectorMetrics::register(registry));
        webhook_metrics = Some(terra_sink_webhooks::WebhookMetrics::register(registry));
    });
    let projector_metrics = projector_metrics.expect("registered above");
    let webhook_metrics = webhook_metrics.expect("registered above");
    tracing::info!(
        mode = if standalone { "standalone" } else { "ingress" },
        log = log.backend(),
        sources = settings.ingress.sources.len(),
        data_dir = %config.data_dir.display(),
        "starting"
    );
    // one token for the process: SIGTERM/Ctrl-C cancels it, and so does a projector that
    // stopped on its own (it has failed: the process stops so it is seen)
    let shutdown = CancellationToken::new();
    terra_runtime::shutdown::cancel_on_signal(&shutdown);
    let mut projectors = Vec::new();
    // standalone's projections run on a runtime of their own whose threads have a lower
    // priority than the ingress's (see `Background`)
    let mut background = None;
    if let Some((sql, batches, objects, query, webhooks)) = projection_settings {
        let store = terra_sink_objects::Store::open(&objects.store)?;
        // its own read pool: long queries cannot hold the projector's connections
        let service = query::for_standalone(
            &sql,
            query.pool_size,
            store,
            query.token_key,
            settings::configured_endpoint_names(&config),
        )?;
        let grpc = query::spawn(query.grpc_addr, query.server, service, shutdown.clone()).await?;
        projectors.push(grpc);
        let runtime = Background::start().context("failed to start the projectors' runtime")?;
        let started = runtime.spawn(start_projections(
            sql,
            batches,
            objects,
            webhooks,
            lag_bound,
            log.clone(),
            projector_metrics,
            webhook_metrics,
            shutdown.clone(),
        ));
        background = Some(runtime);
        projectors.extend(started.await.context("projector start-up panicked")??);
    }
    let ingress = terra_ingress::run(
        settings.ingress,
        log.clone(),
        metrics,
        listener,
        ops_listener,
        shutdown,
    );
    let served = ingress.await.context("ingress server failed");
    let mut projected = Ok(());
    for handle in projectors {
        let result = handle.await.context("projector task panicked")?;
        if projected.is_ok() {
            projected = result;
        }
    }
    if let EventLog::Kafka(kafka) = &log {
        kafka.flush(Duration::from_secs(5));
    }
    if let Some(runtime) = background {
        runtime.stop();
    }
    served?;
    projected?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Opens the SQL target (migrating it) and starts standalone's projectors: the webhook
/// destination when endpoints are configured, then the SQL and object projectors. Run on the
/// [`Background`] runtime, so the projectors, the tasks and threads they start (SQLite's
/// worker thread, the folder store's writers) and the connections they open are all its.
#[allow(clippy::too_many_arguments)]
async fn start_projections(
    sql: settings::SqlSettings,
    batches: settings::Batches,
    objects: settings::ObjectSettings,
    webhooks: Option<terra_sink_webhooks::WebhookSettings>,
    lag_bound: Option<terra_runtime::LagBound>,
    log: EventLog,
    projector_metrics: ProjectorMetrics,
    webhook_metrics: terra_sink_webhooks::WebhookMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let mut projectors = Vec::new();
    let target = project::open_sql(&sql, true, &shutdown).await?;
    if let Some(webhooks) = webhooks {
        let target = crate::webhooks::open_webhook_tables(&sql, &shutdown).await?;
        projectors.push(crate::webhooks::spawn_webhooks(
            webhooks,
            &batches,
            target,
            log.clone(),
            projector_metrics.clone(),
            webhook_metrics,
            shutdown.clone(),
        )?);
    }
    // the two read the same log: each record is planned once, by whichever reads it first
    let plans = terra_projector::SharedPlans::new(
        terra_projector::DEFAULT_SHARED_PLANS,
        terra_projector::DEFAULT_SHARED_PLAN_BYTES,
    );
    let sql_plans = plans
        .reader()
        .counted(projector_metrics.plans_shared(terra_sink_sql::SQL_GROUP));
    let object_plans = plans
        .reader()
        .counted(projector_metrics.plans_shared(terra_sink_objects::OBJECTS_GROUP));
    projectors.push(project::spawn_sql(
        &batches,
        lag_bound.clone(),
        Some(sql_plans),
        target,
        log.clone(),
        projector_metrics.clone(),
        shutdown.clone(),
    ));
    projectors.push(
        project::spawn_objects(
            &objects,
            &batches,
            lag_bound,
            Some(object_plans),
            log,
            projector_metrics,
            shutdown,
        )
        .await?,
    );
    Ok(projectors)
}

/// Longest hold of a webhook while a projection is too far behind: well inside Terra's
/// ~8 s delivery timeout with the append after it.
const PROJECTION_HOLD: Duration = Duration::from_secs(2);

/// How much lower than the ingress's the projectors' threads run in `standalone` (Linux
/// nice steps). 0: the same. Measured at 10,000 webhooks/s (terra-bench standalone, same
/// session, README): with 5 the ingress's p99 went from 35-43 ms to 31 ms, but the SQL
/// projection then fell behind (caught up 3.6 s after the load instead of 0.6-0.7 s), since
/// at that rate the projections need the CPU the ingress takes first. Their own runtime
/// still keeps their batches (planning thousands of records, building statements) off the
/// ingress's worker threads.
pub(crate) const PROJECTOR_NICE: i32 = 0;

/// The runtime standalone's projectors run on: two workers and its blocking pool, every
/// thread [`PROJECTOR_NICE`] below the caller (set on itself when it starts; threads started
/// from them, like SQLite's worker, inherit it).
pub(crate) struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    pub(crate) fn start() -> std::io::Result<Self> {
        // from the caller's priority (the ingress's), not the starting thread's: a blocking
        // thread is started from a thread that is already lowered
        let nice = rustix::process::getpriority_process(None).unwrap_or(0) + PROJECTOR_NICE;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("projector")
            .enable_all()
            .on_thread_start(move || set_priority(nice))
            .build()?;
        Ok(Self(Some(runtime)))
    }

    pub(crate) fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("running").spawn(future)
    }

    /// Stops the runtime without waiting for idle blocking threads (callable from async code,
    /// where dropping a runtime is not).
    pub(crate) fn stop(mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sets the calling thread's nice value (on Linux, nice is per thread). Lowering needs no
/// privilege; where it fails the thread keeps running as it was.
fn set_priority(nice: i32) {
    if let Err(err) = rustix::process::setpriority_process(None, nice) {
        tracing::debug!(error = %err, "could not lower a projector thread's priority");
    }
}
