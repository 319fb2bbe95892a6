//! The gRPC query service: settings (tokens, TLS, the token-sealing key, limits, its own read
//! pool) and `terra-ingest query`; `standalone` starts it through [`spawn`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use terra_query::{Limits, Query, QueryServerConfig, TlsFiles, TokenKey};
use terra_runtime::CancellationToken;
use terra_schema::SqlTarget;
use terra_sink_objects::Store;
use tokio::task::JoinHandle;

use crate::cli::{LogFormat, QueryArgs, QueryCommandArgs};
use crate::settings::{FileSettings, SqlSettings};
use crate::{project, settings, telemetry};

/// File in the data dir holding the key that seals page tokens and watch positions.
pub(crate) const TOKEN_KEY_FILE: &str = "query-token-key";

/// Connections of the query service's read pool unless set.
pub(crate) const DEFAULT_QUERY_POOL_SIZE: u32 = 8;

/// Resolves the server settings (flags and env over the file); errors name the setting.
pub(crate) fn server_config(
    args: &QueryArgs,
    file: &FileSettings,
) -> anyhow::Result<QueryServerConfig> {
    let mut tokens: Vec<String> = args
        .grpc_tokens
        .iter()
        .map(|t| t.expose_secret().trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(path) = &args.grpc_token_file {
        if !tokens.is_empty() {
            anyhow::bail!(
                "setting grpc_token: give --grpc-token (TERRA_INGEST_GRPC_TOKENS) or --grpc-token-file (TERRA_INGEST_GRPC_TOKEN_FILE), not both"
            );
        }
        tokens = settings::lines_of(path)
            .context("setting grpc_token_file (--grpc-token-file, TERRA_INGEST_GRPC_TOKEN_FILE)")?;
    }
    if tokens.iter().any(|t| t.len() < 16) {
        anyhow::bail!(
            "setting grpc_token (--grpc-token, TERRA_INGEST_GRPC_TOKENS): every token must be at least 16 characters"
        );
    }
    let read = |setting: &str, path: &Path| {
        std::fs::read(path)
            .with_context(|| format!("setting {setting}: failed to read {}", path.display()))
    };
    let tls = match (&args.grpc_tls_cert, &args.grpc_tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: read("grpc_tls_cert (--grpc-tls-cert)", cert)?,
            key: read("grpc_tls_key (--grpc-tls-key)", key)?,
            client_ca: args
                .grpc_tls_client_ca
                .as_deref()
                .map(|ca| read("grpc_tls_client_ca (--grpc-tls-client-ca)", ca))
                .transpose()?,
        }),
        _ => None,
    };
    Ok(QueryServerConfig {
        tokens,
        tls,
        insecure_allow_unauthenticated: args.insecure_allow_unauthenticated,
        insecure_allow_plaintext_tokens: args.grpc_insecure_allow_plaintext_tokens,
        limits: limits(args, file)?,
    })
}

/// A setting in whole units within `range`: the flag (or env), else the file, else `default`.
fn bounded<T: Copy + PartialOrd + std::fmt::Display>(
    (key, flag, env): (&str, &str, &str),
    value: Option<T>,
    range: std::ops::RangeInclusive<T>,
    default: T,
) -> anyhow::Result<T> {
    let value = value.unwrap_or(default);
    if !range.contains(&value) {
        anyhow::bail!(
            "setting {key} ({flag}, {env}): must be between {} and {}",
            range.start(),
            range.end()
        );
    }
    Ok(value)
}

/// The query service's timeouts, caps and keepalive.
pub(crate) fn limits(args: &QueryArgs, file: &FileSettings) -> anyhow::Result<Limits> {
    let default = Limits::default();
    let secs = |names, flag: Option<u64>, from_file: Option<u64>, range, default: Duration| {
        bounded(names, flag.or(from_file), range, default.as_secs()).map(Duration::from_secs)
    };
    let timeout = secs(
        (
            "grpc_timeout_secs",
            "--grpc-timeout-secs",
            "TERRA_INGEST_GRPC_TIMEOUT_SECS",
        ),
        args.grpc_timeout_secs,
        file.grpc_timeout_secs,
        1..=3600,
        default.timeout,
    )?;
    let max_in_flight = bounded(
        (
            "grpc_max_in_flight",
            "--grpc-max-in-flight",
            "TERRA_INGEST_GRPC_MAX_IN_FLIGHT",
        ),
        args.grpc_max_in_flight.or(file.grpc_max_in_flight),
        1..=100_000,
        default.max_in_flight,
    )?;
    let max_watchers = bounded(
        (
            "grpc_max_watchers",
            "--grpc-max-watchers",
            "TERRA_INGEST_GRPC_MAX_WATCHERS",
        ),
        args.grpc_max_watchers.or(file.grpc_max_watchers),
        1..=100_000,
        default.max_watchers,
    )?;
    let max_concurrent_streams = bounded(
        (
            "grpc_max_concurrent_streams",
            "--grpc-max-concurrent-streams",
            "TERRA_INGEST_GRPC_MAX_CONCURRENT_STREAMS",
        ),
        args.grpc_max_concurrent_streams
            .or(file.grpc_max_concurrent_streams),
        1..=10_000,
        default.max_concurrent_streams,
    )?;
    let keepalive_interval = secs(
        (
            "grpc_keepalive_secs",
            "--grpc-keepalive-secs",
            "TERRA_INGEST_GRPC_KEEPALIVE_SECS",
        ),
        args.grpc_keepalive_secs,
        file.grpc_keepalive_secs,
        1..=7200,
        default.keepalive_interval,
    )?;
    let keepalive_timeout = secs(
        (
            "grpc_keepalive_timeout_secs",
            "--grpc-keepalive-timeout-secs",
            "TERRA_INGEST_GRPC_KEEPALIVE_TIMEOUT_SECS",
        ),
        args.grpc_keepalive_timeout_secs,
        file.grpc_keepalive_timeout_secs,
        1..=600,
        default.keepalive_timeout,
    )?;
    let max_connection_age = secs(
        (
            "grpc_max_connection_age_secs",
            "--grpc-max-connection-age-secs",
            "TERRA_INGEST_GRPC_MAX_CONNECTION_AGE_SECS",
        ),
        args.grpc_max_connection_age_secs,
        file.grpc_max_connection_age_secs,
        0..=30 * 24 * 3600,
        Duration::ZERO,
    )?;
    Ok(Limits {
        timeout,
        max_in_flight,
        max_watchers,
        max_concurrent_streams,
        keepalive_interval,
        keepalive_timeout,
        max_connection_age: (!max_connection_age.is_zero()).then_some(max_connection_age),
    })
}

/// Connections of the query service's own read pool.
pub(crate) fn pool_size(args: &QueryArgs, file: &FileSettings) -> anyhow::Result<u32> {
    bounded(
        (
            "query_pool_size",
            "--query-pool-size",
            "TERRA_INGEST_QUERY_POOL_SIZE",
        ),
        args.query_pool_size.or(file.query_pool_size),
        1..=1000,
        DEFAULT_QUERY_POOL_SIZE,
    )
}

/// The query service's own read pool over the projection's database: `size` connections
/// apart from the writer's, so long queries cannot hold what the projector writes through
/// (on SQLite: read-only connections beside the one writer, which WAL allows).
pub(crate) fn read_pool(sql: &SqlSettings, size: u32) -> anyhow::Result<SqlTarget> {
    let mut config = sql.config.clone();
    config.max_connections = size;
    SqlTarget::connect_read_only(&config).context("setting sql (the query service's read pool)")
}

/// The token key: given, or generated once into the data dir and kept.
pub(crate) fn token_key(args: &QueryArgs, data_dir: &Path) -> anyhow::Result<TokenKey> {
    let given = settings::value_or_file(
        args.query_token_secret.clone(),
        args.query_token_secret_file.as_deref(),
        (
            "query_token_secret",
            "--query-token-secret",
            "TERRA_INGEST_QUERY_TOKEN_SECRET",
        ),
        (
            "query_token_secret_file",
            "--query-token-secret-file",
            "TERRA_INGEST_QUERY_TOKEN_SECRET_FILE",
        ),
    )?;
    if let Some(secret) = given {
        return Ok(TokenKey::new(secret.expose_secret()));
    }
    let path = data_dir.join(TOKEN_KEY_FILE);
    if !path.exists() {
        settings::private_data_dir(data_dir, true)?;
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("failed to generate a key: {e}"))?;
        settings::write_private(&path, &hex::encode(raw))
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    let key = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    Ok(TokenKey::new(key.trim()))
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
pub(crate) async fn run(
    config: Option<PathBuf>,
    log_format: Option<LogFormat>,
    args: QueryCommandArgs,
) -> anyhow::Result<ExitCode> {
    let file = settings::read_file(config.as_deref())?;
    let data_dir = args
        .project
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(settings::DEFAULT_DATA_DIR));
    let supabase = args.project.sql.supabase.or(file.supabase).unwrap_or(false);
    let objects = settings::resolve_objects(&file, args.objects, &data_dir, supabase)?;
    let grpc_addr: std::net::SocketAddr = args
        .grpc_addr
        .clone()
        .or_else(|| file.grpc_addr.clone())
        .unwrap_or_else(|| settings::DEFAULT_GRPC_ADDR.to_owned())
        .parse()
        .map_err(|_| anyhow::anyhow!("setting grpc_addr (--grpc-addr, TERRA_INGEST_GRPC_ADDR): not an address like 127.0.0.1:50051"))?;
    let server = server_config(&args.query, &file)?;
    let pool_size = pool_size(&args.query, &file)?;
    let key = token_key(&args.query, &data_dir)?;
    let settings = settings::resolve_projector(file, args.project, log_format)?;
    let _telemetry = telemetry::init(settings.log_format, settings.otlp_endpoint.as_deref())?;
    let shutdown = CancellationToken::new();
    terra_runtime::shutdown::cancel_on_signal(&shutdown);
    // the tables are checked (or migrated) through a writer; queries read through their pool
    let writer = project::open_sql(&settings.sql, settings.migrate, &shutdown).await?;
    writer.close().await;
    let sql = read_pool(&settings.sql, pool_size)?;
    let store = Store::open(&objects.store)?;
    let handle = spawn(grpc_addr, server, Query::new(sql, store, key), shutdown).await?;
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
) -> anyhow::Result<Query> {
    Ok(Query::new(read_pool(sql, pool_size)?, store, key))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Executor;
    use terra_eventlog::{EventLog, Record};
    use terra_projector::{ProjectorConfig, ProjectorMetrics};
    use terra_sink_sql::SqlSink;

    use super::*;
    use crate::cli::SqlArgs;

    fn args(set: impl FnOnce(&mut QueryArgs)) -> QueryArgs {
        let mut args = QueryArgs::default();
        set(&mut args);
        args
    }

    #[test]
    fn limits_settings_default_come_from_the_file_and_flags_win() {
        let none = FileSettings::default();
        assert_eq!(
            limits(&QueryArgs::default(), &none).unwrap(),
            Limits::default()
        );
        assert_eq!(pool_size(&QueryArgs::default(), &none).unwrap(), 8);
        let file: FileSettings = toml::from_str(
            "grpc_timeout_secs = 5\ngrpc_max_watchers = 7\ngrpc_max_connection_age_secs = 600\nquery_pool_size = 3\n",
        )
        .unwrap();
        let from_file = limits(&QueryArgs::default(), &file).unwrap();
        assert_eq!(from_file.timeout, Duration::from_secs(5));
        assert_eq!(from_file.max_watchers, 7);
        assert_eq!(from_file.max_connection_age, Some(Duration::from_secs(600)));
        assert_eq!(pool_size(&QueryArgs::default(), &file).unwrap(), 3);
        let flags = args(|a| {
            a.grpc_timeout_secs = Some(9);
            a.grpc_max_in_flight = Some(11);
            a.grpc_max_concurrent_streams = Some(12);
            a.grpc_keepalive_secs = Some(13);
            a.grpc_keepalive_timeout_secs = Some(14);
            a.grpc_max_connection_age_secs = Some(0);
            a.query_pool_size = Some(16);
        });
        let won = limits(&flags, &file).unwrap();
        assert_eq!(
            won,
            Limits {
                timeout: Duration::from_secs(9),
                max_in_flight: 11,
                max_watchers: 7,
                max_concurrent_streams: 12,
                keepalive_interval: Duration::from_secs(13),
                keepalive_timeout: Duration::from_secs(14),
                max_connection_age: None,
            }
        );
        assert_eq!(pool_size(&flags, &file).unwrap(), 16);
        for (bad, names) in [
            (
                args(|a| a.grpc_timeout_secs = Some(0)),
                "grpc_timeout_secs (--grpc-timeout-secs, TERRA_INGEST_GRPC_TIMEOUT_SECS)",
            ),
            (
                args(|a| a.grpc_max_watchers = Some(0)),
                "grpc_max_watchers (--grpc-max-watchers",
            ),
            (
                args(|a| a.grpc_max_in_flight = Some(0)),
                "grpc_max_in_flight (--grpc-max-in-flight",
            ),
            (
                args(|a| a.grpc_max_concurrent_streams = Some(0)),
                "--grpc-max-concurrent-streams",
            ),
            (
                args(|a| a.grpc_keepalive_secs = Some(0)),
                "--grpc-keepalive-secs",
            ),
        ] {
            let err = limits(&bad, &none).unwrap_err().to_string();
            assert!(err.contains(names), "{err}");
        }
        let err = pool_size(&args(|a| a.query_pool_size = Some(0)), &none)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--query-pool-size"), "{err}");
        // and they reach the server's settings, with the plaintext-token opt-in
        let server = server_config(
            &args(|a| a.grpc_insecure_allow_plaintext_tokens = true),
            &file,
        )
        .unwrap();
        assert!(server.insecure_allow_plaintext_tokens);
        assert_eq!(server.limits, from_file);
    }

    fn record(body: &[u8], ordering_ms: i64) -> Record {
        terra_testkit::record(body, Some(ordering_ms), ordering_ms / 1000, None)
    }

    /// Every connection of the query service's pool held, one inside a read transaction (a
    /// long query): the SQL projector still writes what the log holds.
    async fn a_busy_query_pool_does_not_stall_the_projector(url: String, dir: &Path) {
        let sql = settings::resolve_sql(
            &FileSettings::default(),
            SqlArgs {
                sql: Some(url.into()),
                batch_wait_ms: Some(5),
                ..SqlArgs::default()
            },
            dir,
        )
        .unwrap();
        let stopped = CancellationToken::new();
        let writer = project::open_sql(&sql, true, &stopped).await.unwrap();
        let store = Store::open(&terra_sink_objects::StoreConfig {
            url: dir.join("objects").display().to_string(),
            ..terra_sink_objects::StoreConfig::default()
        })
        .unwrap();
        let query = for_standalone(&sql, 2, store, TokenKey::new("k")).unwrap();
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
