//! The gRPC query service: its own read pool and `terra-ingest query`; `standalone` starts it
//! through [`spawn`]. Its settings are `crate::settings::resolve_query`'s.

use std::process::ExitCode;

use anyhow::Context;
use terra_query::{Deliveries, Query, QueryServerConfig, TokenKey};
use terra_runtime::CancellationToken;
use terra_schema::SqlTarget;
use terra_sink_objects::Store;
use tokio::task::JoinHandle;

use crate::settings::{self, Config, SqlSettings};
use crate::{project, telemetry};

/// The query service's own read pool over the projection's database: `size` connections
/// apart from the writer's, so long queries cannot hold what the projector writes through
/// (on SQLite: read-only connections beside the one writer, which WAL allows).
pub(crate) fn read_pool(sql: &SqlSettings, size: u32) -> anyhow::Result<SqlTarget> {
    let mut config = sql.config.clone();
    config.max_connections = size;
    SqlTarget::connect_read_only(&config).context("setting sql (the query service's read pool)")
}

/// The webhook deliveries service served beside the query API, over connections of its own
/// that may write (re-queues, endpoint states): the query service's may be read-only.
pub(crate) fn deliveries(sql: &SqlSettings, configured: Vec<String>) -> anyhow::Result<Deliveries> {
    let mut config = sql.config.clone();
    config.max_connections = 2;
    let writer = SqlTarget::connect(&config)
        .context("setting sql (the webhook deliveries service's connections)")?;
    Ok(Deliveries::new(writer).with_configured(configured))
}

/// Binds and serves the query API until `shutdown` is cancelled.
pub(crate) async fn spawn(
    addr: std::net::SocketAddr,
    config: QueryServerConfig,
    query: Query,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    config.check_bind(addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr} (--grpc-addr)"))?;
    Ok(tokio::spawn(async move {
        terra_query::run(query, config, listener, shutdown)
            .await
            .context("query service failed")
    }))
}

/// `terra-ingest query`.
pub(crate) async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let sql = settings::resolve_sql(&config)?;
    let objects = settings::resolve_objects(&config)?;
    let query = settings::resolve_query(&config)?;
    let traces = settings::resolve_telemetry(&config);
    let _telemetry = telemetry::service(traces.log_format, traces.otlp_endpoint.as_deref())?;
    let shutdown = CancellationToken::new();
    terra_runtime::shutdown::cancel_on_signal(&shutdown);
    // the tables are checked (or migrated) through a writer; queries read through their pool
    let writer = project::open_sql(&sql, sql.migrate, &shutdown).await?;
    writer.close().await;
    let pool = read_pool(&sql, query.pool_size)?;
    let store = Store::open(&objects.store)?;
    let service = Query::new(pool, store, query.token_key).with_deliveries(deliveries(
        &sql,
        settings::configured_endpoint_names(&config),
    )?);
    let handle = spawn(query.grpc_addr, query.server, service, shutdown).await?;
    handle.await.context("query task panicked")??;
    Ok(ExitCode::SUCCESS)
}

/// The query service `standalone` runs beside the projectors, on its own read pool of
/// `pool_size` connections.
pub(crate) fn for_standalone(
    sql: &SqlSettings,
    pool_size: u32,
    store: Store,
    key: TokenKey,
    configured: Vec<String>,
) -> anyhow::Result<Query> {
    Ok(Query::new(read_pool(sql, pool_size)?, store, key)
        .with_deliveries(deliveries(sql, configured)?))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use sqlx::Executor;
    use terra_eventlog::{EventLog, Record};
    use terra_projector::{ProjectorConfig, ProjectorMetrics};
    use terra_sink_sql::SqlSink;

    use super::*;

    fn record(body: &[u8], ordering_ms: i64) -> Record {
        terra_testkit::record(body, Some(ordering_ms), ordering_ms / 1000, None)
    }

    /// Every connection of the query service's pool held, one inside a read transaction (a
    /// long query): the SQL projector still writes what the log holds.
    async fn a_busy_query_pool_does_not_stall_the_projector(url: String, dir: &Path) {
        let mut config = Config {
            data_dir: dir.to_owned(),
            ..Config::default()
        };
        config.sql.url = Some(url.into());
        let sql = settings::resolve_sql(&config).unwrap();
        let stopped = CancellationToken::new();
        let writer = project::open_sql(&sql, true, &stopped).await.unwrap();
        let store = Store::open(&terra_sink_objects::StoreConfig {
            url: dir.join("objects").display().to_string(),
            ..terra_sink_objects::StoreConfig::default()
        })
        .unwrap();
        let query = for_standalone(&sql, 2, store, TokenKey::new("k"), Vec::new()).unwrap();
        let pool = query.sql().pool();
        assert_eq!(pool.options().get_max_connections(), 2, "--query-pool-size");
        let mut held = Vec::new();
        for _ in 0..pool.options().get_max_connections() {
            held.push(
                tokio::time::timeout(Duration::from_secs(5), pool.acquire())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let table = writer.table("ingest_payloads");
        (&mut *held[0]).execute("BEGIN").await.unwrap();
        (&mut *held[0])
            .execute(format!("SELECT COUNT(*) FROM {table}").as_str())
            .await
            .unwrap();

        let log = EventLog::Embedded(
            terra_eventlog::embedded::EmbeddedLog::open(&dir.join("log"), 2).unwrap(),
        );
        let records: Vec<Record> = terra_core::fixtures::ALL
            .iter()
            .enumerate()
            .map(|(i, (_, body))| record(body, 1_780_000_000_000 + i as i64))
            .collect();
        log.append(records).await.unwrap();
        let mut config = ProjectorConfig::new(terra_sink_sql::SQL_GROUP);
        config.stop_at_end = true;
        config.batch_wait = Duration::from_millis(5);
        let projected = tokio::time::timeout(
            Duration::from_secs(30),
            terra_projector::run(
                &config,
                &log,
                &mut SqlSink::new(writer.clone()),
                &ProjectorMetrics::unregistered(),
                stopped,
                |_| {},
            ),
        )
        .await
        .expect("the projector is not stalled by the query pool")
        .unwrap();
        assert!(projected.records > 0, "{projected:?}");
        let rows: i64 = sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(writer.pool())
            .await
            .unwrap();
        assert!(rows > 0);
        (&mut *held[0]).execute("ROLLBACK").await.unwrap();
        if writer.dialect() == terra_schema::Dialect::Sqlite {
            let err = (&mut *held[1])
                .execute(format!("DELETE FROM {table}").as_str())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("readonly"), "{err}");
        }
        drop(held);
        query.sql().close().await;
        writer.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limits_sqlite_a_busy_query_pool_does_not_stall_the_projector() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("terra.db").display());
        a_busy_query_pool_does_not_stall_the_projector(url, dir.path()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limits_mysql_a_busy_query_pool_does_not_stall_the_projector() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let name = format!("cliq_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::AnyPool::connect("mysql://root@127.0.0.1:3306/test")
            .await
            .unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        a_busy_query_pool_does_not_stall_the_projector(
            format!("mysql://root@127.0.0.1:3306/{name}"),
            dir.path(),
        )
        .await;
        let _ = admin
            .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
            .await;
    }
}
