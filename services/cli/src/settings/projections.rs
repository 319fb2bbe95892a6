//! Settings of the projections (SQL, objects) and of `project` / `migrate` / `rebuild`:
//! the same layers as the ingress's (defaults, file, env, flags), errors naming the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use secrecy::ExposeSecret;
use terra_eventlog::LogUrl;
use terra_schema::{Dialect, SqlConfig, Variant};
use terra_sink_objects::{ObjectSinkConfig, SqsConfig, StoreConfig};

use super::{
    DEFAULT_DATA_DIR, DEFAULT_PROJECTOR_HTTP_ADDR, DEFAULT_SQLITE_FILE, FileSettings,
    KafkaProperties, kafka_properties, parse_addr, value_or_file,
};
use crate::cli::{LogFormat, ObjectArgs, ProjectArgs, SqlArgs};

/// The SQL projection's settings, validated.
#[derive(Debug, Clone)]
pub struct SqlSettings {
    pub config: SqlConfig,
    pub batch_size: usize,
    pub batch_wait: Duration,
}

/// Everything `project`, `migrate` and `rebuild` need, validated.
#[derive(Debug)]
pub struct ProjectorSettings {
    pub data_dir: PathBuf,
    pub log: LogUrl,
    pub kafka_properties: KafkaProperties,
    pub http_addr: SocketAddr,
    pub sql: SqlSettings,
    pub migrate: bool,
    pub otlp_endpoint: Option<String>,
    pub log_format: LogFormat,
}

/// Resolves the SQL settings (flags and env over the file over the defaults).
pub fn resolve_sql(
    file: &FileSettings,
    args: SqlArgs,
    data_dir: &Path,
) -> anyhow::Result<SqlSettings> {
    // flags and env over the file; each may give the URL or a file holding it, not both
    let flags = value_or_file(
        args.sql,
        args.sql_file.as_deref(),
        ("sql", "--sql", "TERRA_INGEST_SQL"),
        ("sql_file", "--sql-file", "TERRA_INGEST_SQL_FILE"),
    )?;
    let url = match flags {
        Some(url) => Some(url),
        None => value_or_file(
            file.sql.clone(),
            file.sql_file.as_deref(),
            ("sql", "sql", "in the config file"),
            ("sql_file", "sql_file", "in the config file"),
        )?,
    };
    let url = url.map_or_else(
        || format!("sqlite://{}", data_dir.join(DEFAULT_SQLITE_FILE).display()),
        |url| url.expose_secret().to_owned(),
    );
    let dialect = Dialect::of_url(&url)
        .map_err(|e| anyhow::anyhow!("setting sql (--sql, TERRA_INGEST_SQL): {e}"))?;
    let mut config = SqlConfig::new(url);
    if let Some(schema) = args.sql_schema.or_else(|| file.sql_schema.clone()) {
        config.schema = schema;
    }
    if args.supabase.or(file.supabase).unwrap_or(false) {
        if dialect != Dialect::Postgres {
            bail!(
                "setting supabase (--supabase, TERRA_INGEST_SUPABASE): needs a postgres:// --sql URL (Supabase is Postgres)"
            );
        }
        config.variant = Variant::Supabase;
    }
    // validate names now, so the error names the setting (connecting is lazy)
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("setting sql / sql_schema: {e}"))?;
    let batch_size = args.batch_size.or(file.batch_size).unwrap_or(1_000);
    if !(1..=100_000).contains(&batch_size) {
        bail!(
            "setting batch_size (--batch-size, TERRA_INGEST_BATCH_SIZE): must be between 1 and 100000"
        );
    }
    let batch_wait_ms = args.batch_wait_ms.or(file.batch_wait_ms).unwrap_or(50);
    if batch_wait_ms == 0 || batch_wait_ms > 60_000 {
        bail!(
            "setting batch_wait_ms (--batch-wait-ms, TERRA_INGEST_BATCH_WAIT_MS): must be between 1 and 60000"
        );
    }
    Ok(SqlSettings {
        config,
        batch_size,
        batch_wait: Duration::from_millis(batch_wait_ms),
    })
}

/// The object projection's settings, validated.
#[derive(Debug, Clone)]
pub struct ObjectSettings {
    pub store: StoreConfig,
    pub sqs: Option<SqsConfig>,
    pub sink: ObjectSinkConfig,
}

/// Resolves the object projection's settings. `supabase` presets the bucket.
pub fn resolve_objects(
    file: &FileSettings,
    args: ObjectArgs,
    data_dir: &Path,
    supabase: bool,
) -> anyhow::Result<ObjectSettings> {
    let default_url = if supabase {
        format!("s3://{}", terra_sink_objects::SUPABASE_BUCKET)
    } else {
        format!("file://{}", data_dir.join("objects").display())
    };
    let url = args
        .objects
        .or_else(|| file.objects.clone())
        .unwrap_or(default_url);
    let s3_endpoint = args.s3_endpoint.or_else(|| file.s3_endpoint.clone());
    let allow_http = args.s3_allow_http.or(file.s3_allow_http).unwrap_or(false);
    let store = StoreConfig {
        url,
        prefix: args
            .objects_prefix
            .or_else(|| file.objects_prefix.clone())
            .unwrap_or_default(),
        s3_path_style: args
            .s3_path_style
            .or(file.s3_path_style)
            .unwrap_or(supabase),
        s3_region: args
            .s3_region
            .or_else(|| file.s3_region.clone())
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .or_else(|| Some("us-east-1".to_owned())),
        s3_endpoint,
        allow_http,
    };
    if let Some(endpoint) = &store.s3_endpoint
        && endpoint.starts_with("http://")
        && !allow_http
    {
        bail!(
            "setting s3_endpoint (--s3-endpoint): {endpoint} is plain HTTP; set s3_allow_http (--s3-allow-http) for a local server"
        );
    }
    // validate now, so the error names the setting (nothing connects yet)
    terra_sink_objects::Store::open(&store)
        .map_err(|e| anyhow::anyhow!("setting objects (--objects, TERRA_INGEST_OBJECTS): {e}"))?;
    let sqs = args
        .sqs_queue_url
        .or_else(|| file.sqs_queue_url.clone())
        .map(|queue_url| SqsConfig {
            queue_url,
            endpoint: args
                .sqs_endpoint
                .clone()
                .or_else(|| file.sqs_endpoint.clone()),
            region: store.s3_region.clone(),
        });
    let expiry = args
        .presign_expiry_secs
        .or(file.presign_expiry_secs)
        .unwrap_or(600);
    if !(1..=7 * 24 * 3600).contains(&expiry) {
        bail!(
            "setting presign_expiry_secs (--presign-expiry-secs): must be between 1 and 604800 (7 days, S3's limit)"
        );
    }
    Ok(ObjectSettings {
        store,
        sqs,
        sink: ObjectSinkConfig {
            expires_in: Duration::from_secs(expiry),
        },
    })
}

/// Resolves the settings of `project`, `migrate` and `rebuild`.
pub fn resolve_projector(
    file: FileSettings,
    args: ProjectArgs,
    cli_log_format: Option<LogFormat>,
) -> anyhow::Result<ProjectorSettings> {
    let data_dir = args
        .data_dir
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let http_addr = parse_addr(
        "http_addr (--http-addr, TERRA_INGEST_HTTP_ADDR)",
        args.http_addr.or_else(|| file.http_addr.clone()),
        DEFAULT_PROJECTOR_HTTP_ADDR,
    )?;
    let log_text = args
        .log
        .or_else(|| file.log.clone())
        .unwrap_or_else(|| "embedded".to_owned());
    let log = LogUrl::parse(&log_text, &data_dir.join("log"))
        .map_err(|e| anyhow::anyhow!("setting log (--log, TERRA_INGEST_LOG): {e}"))?;
    let sql = resolve_sql(&file, args.sql, &data_dir)?;
    let kafka_properties =
        KafkaProperties(kafka_properties(file.kafka.0.clone(), std::env::vars())?);
    let otlp_endpoint = args
        .otlp_endpoint
        .or_else(|| file.otlp_endpoint.clone())
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty());
    Ok(ProjectorSettings {
        migrate: args.migrate.or(file.migrate).unwrap_or(false),
        log_format: cli_log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        data_dir,
        log,
        kafka_properties,
        http_addr,
        sql,
        otlp_endpoint,
    })
}
