//! `standalone` and `ingress`: resolve settings, open the log, serve until SIGTERM/Ctrl-C.
//! `standalone` also runs the SQL and object projectors in the same process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use terra_eventlog::EventLog;
use terra_ingress::Metrics;
use terra_projector::ProjectorMetrics;
use terra_runtime::CancellationToken;

use crate::cli::{LogFormat, ObjectArgs, QueryArgs, ServeArgs, SqlArgs};
use crate::{project, query, settings, telemetry};

/// Runs the ingress; with `projections` (standalone) the SQL and object projectors too.
pub(crate) async fn run(
    config: Option<PathBuf>,
    log_format: Option<LogFormat>,
    args: ServeArgs,
    projections: Option<(SqlArgs, ObjectArgs, QueryArgs)>,
) -> anyhow::Result<ExitCode> {
    let standalone = projections.is_some();
    let file = settings::read_file(config.as_deref())?;
    let projection_settings = match projections {
        Some((sql, objects, query_args)) => {
            let data_dir = args
                .data_dir
                .clone()
                .or_else(|| file.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from(settings::DEFAULT_DATA_DIR));
            let sql = settings::resolve_sql(&file, sql, &data_dir)?;
            let supabase = sql.config.variant == terra_schema::Variant::Supabase;
            let objects = settings::resolve_objects(&file, objects, &data_dir, supabase)?;
            let server = query::server_config(&query_args, &file)?;
            let pool_size = query::pool_size(&query_args, &file)?;
            let key = query::token_key(&query_args, &data_dir)?;
            Some((sql, objects, server, key, pool_size))
        }
        None => None,
    };
    let mut settings = settings::resolve(file, args, log_format, standalone)?;
    // every body the ingress accepts must fit in one log record
    if let terra_eventlog::LogUrl::Kafka(kafka) = &mut settings.log {
        kafka.max_body_bytes = settings.ingress.body_limit;
    }
    let _telemetry = telemetry::init(settings.log_format, settings.otlp_endpoint.as_deref())?;
    if standalone {
        // standalone keeps everything in the data dir: 0700, made so or tightened
        settings::private_data_dir(&settings.data_dir, true)?;
    }
    if let Some(path) = &settings.generated_secret {
        tracing::info!(path = %path.display(), "the default source's signing secret is in this file: paste its value into Terra's dashboard, or sign test deliveries with `terra-ingest send`");
    }
    let log = EventLog::open(&settings.log, &settings.kafka_properties)
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
    let mut projector_metrics = None;
    let metrics = Metrics::with_extra(|registry| {
        projector_metrics = Some(ProjectorMetrics::register(registry));
    });
    let projector_metrics = projector_metrics.expect("registered above");
    tracing::info!(
        mode = if standalone { "standalone" } else { "ingress" },
        log = log.backend(),
        sources = settings.ingress.sources.len(),
        data_dir = %settings.data_dir.display(),
        "starting"
    );
    // one token for the process: SIGTERM/Ctrl-C cancels it, and so does a projector that
    // stopped on its own (it has failed: the process stops so it is seen)
    let shutdown = CancellationToken::new();
    terra_runtime::shutdown::cancel_on_signal(&shutdown);
    let mut projectors = Vec::new();
    if let Some((sql, objects, server, key, pool_size)) = projection_settings {
        let target = project::open_sql(&sql, true, &shutdown).await?;
        let store = terra_sink_objects::Store::open(&objects.store)?;
        // its own read pool: long queries cannot hold the projector's connections
        let service = query::for_standalone(&sql, pool_size, store, key)?;
        let grpc = query::spawn(settings.grpc_addr, server, service, shutdown.clone()).await?;
        projectors.push(grpc);
        projectors.push(project::spawn_sql(
            &sql,
            target,
            log.clone(),
            projector_metrics.clone(),
            shutdown.clone(),
        ));
        projectors.push(
            project::spawn_objects(
                &objects,
                &sql,
                log.clone(),
                projector_metrics,
                shutdown.clone(),
            )
            .await?,
        );
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
    served?;
    projected?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
