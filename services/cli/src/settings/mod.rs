//! Configuration layers, resolved once at start-up: defaults, then the optional TOML file,
//! then `TERRA_INGEST_*` environment variables, then flags (clap applies env and flags).
//! Every error names the setting that is wrong; no error contains a secret.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use terra_core::{SigningSecret, Verifier};
use terra_eventlog::LogUrl;
use terra_ingress::{AllowEntry, DEFAULT_SOURCE, IngressConfig, Source};

use terra_projector::sql::{Dialect, SqlConfig, Variant};

use terra_objects::{ObjectSinkConfig, SqsConfig, StoreConfig};

use crate::cli::{LogFormat, ObjectArgs, ProjectArgs, ServeArgs, SqlArgs};

pub const DEFAULT_DATA_DIR: &str = "data";
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
/// The projector's own HTTP endpoint (`project sql`): health and metrics.
pub const DEFAULT_PROJECTOR_HTTP_ADDR: &str = "0.0.0.0:9090";
/// The SQLite file of the default SQL projection, in the data dir.
pub const DEFAULT_SQLITE_FILE: &str = "terra.db";
/// File in the data dir holding the secret standalone generated.
pub const GENERATED_SECRET_FILE: &str = "signing-secret";
const KAFKA_ENV_PREFIX: &str = "TERRA_INGEST_KAFKA_";

/// The TOML file. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub data_dir: Option<PathBuf>,
    pub http_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub log: Option<String>,
    pub log_format: Option<LogFormat>,
    pub body_limit: Option<usize>,
    pub append_timeout_ms: Option<u64>,
    pub otlp_endpoint: Option<String>,
    /// SQL projection: database URL (`sql`), Postgres schema, Supabase variant, batches,
    /// migrations at start-up.
    pub sql: Option<String>,
    pub sql_schema: Option<String>,
    pub supabase: Option<bool>,
    pub batch_size: Option<usize>,
    pub batch_wait_ms: Option<u64>,
    pub migrate: Option<bool>,
    /// Object projection: store URL, prefix, S3 endpoint/region/path-style/plain HTTP, SQS.
    pub objects: Option<String>,
    pub objects_prefix: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_allow_http: Option<bool>,
    pub sqs_queue_url: Option<String>,
    pub sqs_endpoint: Option<String>,
    pub presign_expiry_secs: Option<u64>,
    /// librdkafka client properties, passed through (values may be `env:NAME` or
    /// `file:PATH`).
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
    #[serde(default)]
    pub sources: BTreeMap<String, FileSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// Inline secrets (prefer secret_env or secret_files).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Environment variables holding secrets.
    #[serde(default)]
    pub secret_env: Vec<String>,
    /// Files holding secrets, one per line.
    #[serde(default)]
    pub secret_files: Vec<PathBuf>,
    pub tolerance_secs: Option<u64>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

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
    pub kafka_properties: Vec<(String, String)>,
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
    let url = args
        .sql
        .or_else(|| file.sql.clone())
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join(DEFAULT_SQLITE_FILE).display()));
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
        format!("s3://{}", terra_objects::SUPABASE_BUCKET)
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
    terra_objects::Store::open(&store)
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
    let kafka_properties = kafka_properties(file.kafka.clone(), std::env::vars())?;
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

/// Everything a service needs, validated.
#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub log: LogUrl,
    pub kafka_properties: Vec<(String, String)>,
    pub ingress: IngressConfig,
    pub otlp_endpoint: Option<String>,
    pub log_format: LogFormat,
    /// Where the default source's secret was generated, when standalone had to make one.
    pub generated_secret: Option<PathBuf>,
}

pub fn read_file(path: Option<&Path>) -> anyhow::Result<FileSettings> {
    let Some(path) = path else {
        return Ok(FileSettings::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is invalid", path.display()))
}

/// Resolves the layers. `standalone` may generate the default source's secret.
pub fn resolve(
    file: FileSettings,
    args: ServeArgs,
    cli_log_format: Option<LogFormat>,
    standalone: bool,
) -> anyhow::Result<Settings> {
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let http_addr = parse_addr(
        "http_addr (--http-addr, TERRA_INGEST_HTTP_ADDR)",
        args.http_addr.or(file.http_addr),
        DEFAULT_HTTP_ADDR,
    )?;
    let grpc_addr = parse_addr(
        "grpc_addr (--grpc-addr, TERRA_INGEST_GRPC_ADDR)",
        args.grpc_addr.or(file.grpc_addr),
        DEFAULT_GRPC_ADDR,
    )?;
    let log_text = args
        .log
        .or(file.log)
        .unwrap_or_else(|| "embedded".to_owned());
    let log = LogUrl::parse(&log_text, &data_dir.join("log"))
        .map_err(|e| anyhow::anyhow!("setting log (--log, TERRA_INGEST_LOG): {e}"))?;
    let kafka_properties = kafka_properties(file.kafka, std::env::vars())?;

    let mut sources = BTreeMap::new();
    let mut file_sources = file.sources;
    let file_default = file_sources.remove(DEFAULT_SOURCE).unwrap_or_default();
    for (name, source) in file_sources {
        Source::validate_name(&name).map_err(|e| anyhow::anyhow!("setting sources.{name}: {e}"))?;
        let built = build_source(&name, source, &format!("sources.{name}"))?
            .with_context(|| format!("setting sources.{name}: no signing secret (set secrets, secret_env or secret_files)"))?;
        sources.insert(name, built);
    }

    let mut default = file_default;
    if args.signing_secret.is_some() || args.signing_secret_file.is_some() {
        default.secrets = args.signing_secret.into_iter().collect();
        default.secret_env.clear();
        default.secret_files = args.signing_secret_file.into_iter().collect();
    }
    if let Some(tolerance) = args.tolerance_secs {
        default.tolerance_secs = Some(tolerance);
    }
    if let Some(allow) = args.allow {
        default.allow = allow;
    }
    if let Some(proxies) = args.trusted_proxies {
        default.trusted_proxies = proxies;
    }
    let has_secret = !(default.secrets.is_empty()
        && default.secret_env.is_empty()
        && default.secret_files.is_empty());
    let mut generated_secret = None;
    if standalone && !has_secret {
        let path = generated_default_secret(&data_dir)?;
        default.secret_files = vec![path.clone()];
        generated_secret = Some(path);
    }
    let default_source = build_source(DEFAULT_SOURCE, default, "the default source")?;
    if default_source.is_none() && sources.is_empty() {
        bail!(
            "no signing secret: set --signing-secret / TERRA_INGEST_SIGNING_SECRET, --signing-secret-file, or [sources.default] in the config file"
        );
    }
    if let Some(source) = default_source {
        sources.insert(DEFAULT_SOURCE.to_owned(), source);
    }

    let mut ingress = IngressConfig::new(sources.into_values());
    if let Some(limit) = args.body_limit.or(file.body_limit) {
        if limit == 0 {
            bail!(
                "setting body_limit (--body-limit, TERRA_INGEST_BODY_LIMIT): must be at least 1 byte"
            );
        }
        ingress.body_limit = limit;
    }
    if let Some(ms) = file.append_timeout_ms {
        if ms == 0 {
            bail!("setting append_timeout_ms: must be at least 1");
        }
        ingress.append_timeout = Duration::from_millis(ms);
    }
    let otlp_endpoint = args
        .otlp_endpoint
        .or(file.otlp_endpoint)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty());
    let log_format = cli_log_format
        .or(file.log_format)
        .unwrap_or(LogFormat::Text);
    Ok(Settings {
        data_dir,
        http_addr,
        grpc_addr,
        log,
        kafka_properties,
        ingress,
        otlp_endpoint,
        log_format,
        generated_secret,
    })
}

fn parse_addr(setting: &str, value: Option<String>, default: &str) -> anyhow::Result<SocketAddr> {
    let text = value.unwrap_or_else(|| default.to_owned());
    text.parse().map_err(|_| {
        anyhow::anyhow!("setting {setting}: {text:?} is not an address like 0.0.0.0:8080")
    })
}

/// Builds a source; `Ok(None)` when it has no secret at all.
fn build_source(name: &str, source: FileSource, setting: &str) -> anyhow::Result<Option<Source>> {
    let mut secrets = Vec::new();
    for (i, secret) in source.secrets.into_iter().enumerate() {
        secrets.push(
            SigningSecret::new(secret)
                .map_err(|e| anyhow::anyhow!("setting {setting} secrets[{i}]: {e}"))?,
        );
    }
    for var in &source.secret_env {
        let value = std::env::var(var).map_err(|_| {
            anyhow::anyhow!("setting {setting} secret_env: environment variable {var} is not set")
        })?;
        secrets.push(
            SigningSecret::new(value)
                .map_err(|e| anyhow::anyhow!("setting {setting} secret_env: {var}: {e}"))?,
        );
    }
    for path in &source.secret_files {
        secrets.extend(
            read_secret_file(path)
                .with_context(|| format!("setting {setting} secret file {}", path.display()))?,
        );
    }
    if secrets.is_empty() {
        return Ok(None);
    }
    let allowlist = if source.allow.is_empty() {
        None
    } else {
        let mut nets = Vec::new();
        for entry in &source.allow {
            nets.extend(
                AllowEntry::parse(entry)
                    .map_err(|e| anyhow::anyhow!("setting {setting} allow: {e}"))?
                    .networks(),
            );
        }
        Some(nets)
    };
    let mut trusted_proxies = Vec::new();
    for entry in &source.trusted_proxies {
        match AllowEntry::parse(entry)
            .map_err(|e| anyhow::anyhow!("setting {setting} trusted_proxies: {e}"))?
        {
            AllowEntry::Net(net) => trusted_proxies.push(net),
            AllowEntry::TerraPreset => bail!(
                "setting {setting} trusted_proxies: \"terra\" is an allowlist preset, not a proxy"
            ),
        }
    }
    let tolerance = source
        .tolerance_secs
        .unwrap_or(terra_core::signature::DEFAULT_TOLERANCE_SECS);
    Ok(Some(Source {
        name: name.to_owned(),
        verifier: Verifier::new(secrets, tolerance),
        allowlist,
        trusted_proxies,
    }))
}

/// Every non-empty line of a secret file is one active secret.
pub fn read_secret_file(path: &Path) -> anyhow::Result<Vec<SigningSecret>> {
    let text = std::fs::read_to_string(path).context("failed to read it")?;
    let secrets: Vec<_> = text
        .lines()
        .filter_map(|line| SigningSecret::new(line).ok())
        .collect();
    if secrets.is_empty() {
        bail!("it holds no secret");
    }
    Ok(secrets)
}

/// Where standalone keeps the default source's generated secret; made now when missing.
pub fn generated_default_secret(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join(GENERATED_SECRET_FILE);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("failed to create the data dir {}", data_dir.display()))?;
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("failed to generate a secret: {e}"))?;
    write_private(&path, &format!("whsec_{}\n", hex::encode(raw)))
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// librdkafka properties from the file's `[kafka]` table and `TERRA_INGEST_KAFKA_*`
/// variables (`TERRA_INGEST_KAFKA_SASL_PASSWORD` → `sasl.password`; env wins). Values of the
/// form `env:NAME` / `file:PATH` are read from there.
fn kafka_properties(
    file: BTreeMap<String, String>,
    env: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut properties = file;
    for (name, value) in env {
        if let Some(rest) = name.strip_prefix(KAFKA_ENV_PREFIX) {
            properties.insert(rest.to_ascii_lowercase().replace('_', "."), value);
        }
    }
    properties
        .into_iter()
        .map(|(name, value)| {
            let value = if let Some(var) = value.strip_prefix("env:") {
                std::env::var(var).map_err(|_| {
                    anyhow::anyhow!("setting kafka.{name}: environment variable {var} is not set")
                })?
            } else if let Some(path) = value.strip_prefix("file:") {
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        anyhow::anyhow!("setting kafka.{name}: failed to read {path}: {e}")
                    })?
                    .trim()
                    .to_owned()
            } else {
                value
            };
            Ok((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests;
