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
    let settings = settings::resolve_ingress(&config, standalone)?;
    let log_settings = settings::resolve_log(&config)?;
    let traces = settings::resolve_telemetry(&config);
    let _telemetry = telemetry::init(traces.log_format, traces.otlp_endpoint.as_deref())?;
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
    if let Some((sql, batches, objects, query, webhooks)) = projection_settings {
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
        projectors.push(project::spawn_sql(
            &batches,
            target,
            log.clone(),
            projector_metrics.clone(),
            shutdown.clone(),
        ));
        projectors.push(
            project::spawn_objects(
                &objects,
                &batches,
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
