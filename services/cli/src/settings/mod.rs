//! Configuration layers, resolved once at start-up: defaults, then the optional TOML file,
//! then `TERRA_INGEST_*` environment variables, then flags (clap applies env and flags).
//! Every error names the setting that is wrong; no error contains a secret.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use terra_core::{SigningSecret, Verifier};
use terra_eventlog::{LogUrl, private_fs};
use terra_ingress::{AllowEntry, DEFAULT_SOURCE, IngressConfig, Source};

use crate::cli::{LogFormat, ServeArgs};

mod projections;
mod secrets;

pub use projections::{
    ObjectSettings, ProjectorSettings, SqlSettings, resolve_objects, resolve_projector, resolve_sql,
};
pub use secrets::{KafkaProperties, KafkaTable};
pub(crate) use secrets::{lines_of, value_or_file};

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
    pub ops_addr: Option<String>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_in_flight_requests: Option<usize>,
    pub max_in_flight_bytes: Option<usize>,
    pub replay_cache_entries: Option<usize>,
    pub rejection_logs_per_sec: Option<u32>,
    pub otlp_endpoint: Option<String>,
    /// SQL projection: database URL (`sql`), Postgres schema, Supabase variant, batches,
    /// migrations at start-up.
    pub sql: Option<SecretString>,
    /// A file holding the `sql` URL (it may carry the password).
    pub sql_file: Option<PathBuf>,
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
    /// Query service limits (see `query::limits`): call deadline, caps, keepalive,
    /// connection age, its own read pool.
    pub grpc_timeout_secs: Option<u64>,
    pub grpc_max_in_flight: Option<usize>,
    pub grpc_max_watchers: Option<usize>,
    pub grpc_max_concurrent_streams: Option<u32>,
    pub grpc_keepalive_secs: Option<u64>,
    pub grpc_keepalive_timeout_secs: Option<u64>,
    pub grpc_max_connection_age_secs: Option<u64>,
    pub query_pool_size: Option<u32>,
    /// librdkafka client properties, passed through (values may be `env:NAME` or
    /// `file:PATH`).
    #[serde(default)]
    pub kafka: KafkaTable,
    #[serde(default)]
    pub sources: BTreeMap<String, FileSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// Inline secrets (prefer secret_env or secret_files).
    #[serde(default)]
    pub secrets: Vec<SecretString>,
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

/// Everything a service needs, validated.
#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    /// Where `/readyz` and `/metrics` are served when not on the webhook port.
    pub ops_addr: Option<SocketAddr>,
    pub grpc_addr: SocketAddr,
    pub log: LogUrl,
    pub kafka_properties: KafkaProperties,
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
    let kafka_properties = KafkaProperties(kafka_properties(file.kafka.0, std::env::vars())?);

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
    if args.signing_secret.is_some() && args.signing_secret_file.is_some() {
        bail!(
            "setting signing_secret: give --signing-secret (TERRA_INGEST_SIGNING_SECRET) or --signing-secret-file (TERRA_INGEST_SIGNING_SECRET_FILE), not both"
        );
    }
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
    if let Some(ms) = args.append_timeout_ms.or(file.append_timeout_ms) {
        if ms == 0 {
            bail!(
                "setting append_timeout_ms (--append-timeout-ms, TERRA_INGEST_APPEND_TIMEOUT_MS): must be at least 1"
            );
        }
        ingress.append_timeout = Duration::from_millis(ms);
    }
    let limits = &mut ingress.limits;
    for (value, slot) in [
        (
            args.header_read_timeout_ms.or(file.header_read_timeout_ms),
            &mut limits.header_read_timeout,
        ),
        (
            args.body_read_timeout_ms.or(file.body_read_timeout_ms),
            &mut limits.body_read_timeout,
        ),
        (
            args.request_timeout_ms.or(file.request_timeout_ms),
            &mut limits.request_timeout,
        ),
    ] {
        if let Some(ms) = value {
            *slot = Duration::from_millis(ms);
        }
    }
    for (value, slot) in [
        (
            args.max_connections.or(file.max_connections),
            &mut limits.max_connections,
        ),
        (
            args.max_in_flight_requests.or(file.max_in_flight_requests),
            &mut limits.max_in_flight_requests,
        ),
        (
            args.max_in_flight_bytes.or(file.max_in_flight_bytes),
            &mut limits.max_in_flight_bytes,
        ),
        (
            args.replay_cache_entries.or(file.replay_cache_entries),
            &mut ingress.replay_cache_entries,
        ),
    ] {
        if let Some(value) = value {
            *slot = value;
        }
    }
    if let Some(per_sec) = args.rejection_logs_per_sec.or(file.rejection_logs_per_sec) {
        ingress.rejection_logs_per_sec = per_sec;
    }
    // the setting names in the message are the file keys; flags and env are their twins
    ingress.validate().map_err(|e| {
        anyhow::anyhow!("{e} (the flag and TERRA_INGEST_* variable of the same name)")
    })?;
    let ops_addr = match args.ops_addr.or(file.ops_addr) {
        Some(text) => Some(parse_addr(
            "ops_addr (--ops-addr, TERRA_INGEST_OPS_ADDR)",
            Some(text),
            "",
        )?),
        None => None,
    };
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
        ops_addr,
        grpc_addr,
        log,
        kafka_properties,
        ingress,
        otlp_endpoint,
        log_format,
        generated_secret,
    })
}

pub(crate) fn parse_addr(
    setting: &str,
    value: Option<String>,
    default: &str,
) -> anyhow::Result<SocketAddr> {
    let text = value.unwrap_or_else(|| default.to_owned());
    text.parse().map_err(|_| {
        anyhow::anyhow!("setting {setting}: {text:?} is not an address like 0.0.0.0:8080")
    })
}

/// Builds a source; `Ok(None)` when it has no secret at all.
fn build_source(name: &str, source: FileSource, setting: &str) -> anyhow::Result<Option<Source>> {
    let mut secrets = Vec::new();
    for (i, secret) in source.secrets.iter().enumerate() {
        secrets.push(
            SigningSecret::new(secret.expose_secret())
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
    private_data_dir(data_dir, true)?;
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("failed to generate a secret: {e}"))?;
    write_private(&path, &format!("whsec_{}\n", hex::encode(raw)))
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

/// Health data at rest: the data dir is 0700 (made so when `create`, tightened when it
/// exists looser; see `terra_eventlog::private_fs`).
pub(crate) fn private_data_dir(data_dir: &Path, create: bool) -> anyhow::Result<()> {
    if create {
        private_fs::create_dir_all(data_dir)
            .with_context(|| format!("failed to create the data dir {}", data_dir.display()))?;
    }
    private_fs::tighten_and_warn(data_dir);
    Ok(())
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
pub(crate) fn kafka_properties(
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
