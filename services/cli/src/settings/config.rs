//! The configuration's shape: one typed tree (top-level `data_dir`, then one section per
//! part of the system) and the default of every setting, here and nowhere else: the
//! `Default` impls, which take the services' own constants. Every section refuses unknown
//! keys, so a typo never silently falls back to a default. What is merged into this tree,
//! and in which order, is `layers`' business; what a value means is checked by the
//! resolvers beside it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use super::secrets::KafkaTable;

pub const DEFAULT_DATA_DIR: &str = "data";
/// The ingress's webhook port.
pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080);
/// The query service: loopback unless authenticated (see `terra_query`).
pub const DEFAULT_GRPC_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);
/// A projector's own HTTP endpoint (`project sql`, `project objects`): health and metrics.
pub const DEFAULT_PROJECTOR_HTTP_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9090);
/// The embedded log under the data dir.
pub const DEFAULT_LOG: &str = "embedded";
/// Connections of the query service's read pool.
pub const DEFAULT_QUERY_POOL_SIZE: u32 = 8;
/// S3's region when neither the settings nor AWS_REGION / AWS_DEFAULT_REGION name one.
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// Everything the services read, merged from every layer; not yet checked against itself
/// (see the resolvers).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The embedded log, the default SQLite file, generated secrets (0700).
    pub data_dir: PathBuf,
    pub ingress: IngressSection,
    pub log: LogSection,
    pub projector: ProjectorSection,
    pub sql: SqlSection,
    pub objects: ObjectsSection,
    pub query: QuerySection,
    pub webhooks: super::webhooks::WebhooksSection,
    pub telemetry: TelemetrySection,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            ingress: IngressSection::default(),
            log: LogSection::default(),
            projector: ProjectorSection::default(),
            sql: SqlSection::default(),
            objects: ObjectsSection::default(),
            query: QuerySection::default(),
            webhooks: super::webhooks::WebhooksSection::default(),
            telemetry: TelemetrySection::default(),
        }
    }
}

/// `[ingress]`: the HTTP server, its limits, the replay cache and the webhook sources.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressSection {
    pub http_addr: SocketAddr,
    /// `/readyz` and `/metrics` on their own address instead of the webhook port.
    pub ops_addr: Option<SocketAddr>,
    pub body_limit: usize,
    pub append_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_connections: usize,
    pub max_in_flight_requests: usize,
    pub max_in_flight_bytes: usize,
    pub replay_cache_entries: usize,
    pub rejection_logs_per_sec: u32,
    /// `default` serves POST /webhook, any other name POST /webhooks/<name>.
    pub sources: BTreeMap<String, SourceSection>,
}

impl Default for IngressSection {
    fn default() -> Self {
        use terra_ingress::{IngressConfig, Limits};
        let limits = Limits::default();
        Self {
            http_addr: DEFAULT_HTTP_ADDR,
            ops_addr: None,
            body_limit: IngressConfig::DEFAULT_BODY_LIMIT,
            append_timeout_ms: millis(IngressConfig::DEFAULT_APPEND_TIMEOUT),
            header_read_timeout_ms: millis(limits.header_read_timeout),
            body_read_timeout_ms: millis(limits.body_read_timeout),
            request_timeout_ms: millis(limits.request_timeout),
            max_connections: limits.max_connections,
            max_in_flight_requests: limits.max_in_flight_requests,
            max_in_flight_bytes: limits.max_in_flight_bytes,
            replay_cache_entries: IngressConfig::DEFAULT_REPLAY_CACHE_ENTRIES,
            rejection_logs_per_sec: IngressConfig::DEFAULT_REJECTION_LOGS_PER_SEC,
            sources: BTreeMap::new(),
        }
    }
}

/// `[ingress.sources.<name>]`: one Terra webhook. A layer that gives any of `secrets`,
/// `secret_env` or `secret_files` replaces all three from the layers below.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceSection {
    /// Inline secrets (prefer `secret_env` or `secret_files`).
    #[serde(deserialize_with = "one_or_many")]
    pub secrets: Vec<SecretString>,
    /// Environment variables holding secrets.
    #[serde(deserialize_with = "one_or_many")]
    pub secret_env: Vec<String>,
    /// Files holding secrets, one per line.
    #[serde(deserialize_with = "one_or_many")]
    pub secret_files: Vec<PathBuf>,
    /// Replay window, seconds.
    pub tolerance_secs: u64,
    /// CIDRs, addresses or `terra`; empty: every address.
    #[serde(deserialize_with = "one_or_many")]
    pub allow: Vec<String>,
    /// Proxies whose X-Forwarded-For is believed.
    #[serde(deserialize_with = "one_or_many")]
    pub trusted_proxies: Vec<String>,
}

impl Default for SourceSection {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            secret_env: Vec::new(),
            secret_files: Vec::new(),
            tolerance_secs: terra_core::signature::DEFAULT_TOLERANCE_SECS,
            allow: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[log]`: the event log and, for Kafka, librdkafka's client properties.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `embedded`, `embedded:PATH`, `kafka://…` or `kafka-mock://TOPIC`.
    pub url: String,
    /// Kafka: replicas per partition (the URL's `replication=N` says the same). Default
    /// `terra_eventlog::DEFAULT_REPLICATION_FACTOR`, lowered on a smaller cluster.
    pub replication_factor: Option<u32>,
    /// Kafka: the topic's `min.insync.replicas`. Default
    /// `terra_eventlog::DEFAULT_MIN_INSYNC_REPLICAS`, at most the replication factor - 1.
    pub min_insync_replicas: Option<u32>,
    /// Kafka: an existing topic that can lose records is warned about or refused.
    pub unsafe_topic: UnsafeTopic,
    /// Passed through; values may be `env:NAME` or `file:PATH`.
    pub kafka: KafkaTable,
    pub embedded: EmbeddedSection,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            url: DEFAULT_LOG.to_owned(),
            replication_factor: None,
            min_insync_replicas: None,
            unsafe_topic: UnsafeTopic::default(),
            kafka: KafkaTable::default(),
            embedded: EmbeddedSection::default(),
        }
    }
}

/// `[log.embedded]`: the embedded log's segments, retention and append queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedSection {
    /// A segment is sealed and the next one started at this size.
    pub segment_bytes: u64,
    /// Delete sealed segments older than this (once every consumer group is past them).
    /// Unset: keep everything (the log is the source of truth).
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while the log is larger (same rule).
    pub retention_bytes: Option<u64>,
    /// Bytes waiting for the disk; an append past it is answered 503 at once.
    pub max_queued_bytes: usize,
}

impl Default for EmbeddedSection {
    fn default() -> Self {
        let defaults = terra_eventlog::embedded::EmbeddedOptions::default();
        Self {
            segment_bytes: defaults.segment_bytes,
            retention_ms: defaults.retention.map(millis),
            retention_bytes: defaults.retention_bytes,
            max_queued_bytes: defaults.max_queued_bytes,
        }
    }
}

/// `log.unsafe_topic`: what to do at start with a Kafka topic that can lose records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsafeTopic {
    /// Log a warning naming every problem, and run.
    #[default]
    Warn,
    /// Refuse to start.
    Refuse,
}

/// `[projector]`: what the SQL and object projectors share.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorSection {
    /// A projector run alone serves `/healthz`, `/readyz`, `/metrics` here.
    pub http_addr: SocketAddr,
    pub batch_size: usize,
    pub batch_wait_ms: u64,
    pub batch_linger_ms: u64,
    /// `standalone`: records a projection may be behind before the ingress holds new webhooks
    /// (0: never held).
    pub max_lag: u64,
}

impl Default for ProjectorSection {
    fn default() -> Self {
        Self {
            http_addr: DEFAULT_PROJECTOR_HTTP_ADDR,
            batch_size: terra_projector::DEFAULT_BATCH_SIZE,
            batch_wait_ms: millis(terra_projector::DEFAULT_BATCH_WAIT),
            batch_linger_ms: millis(terra_projector::DEFAULT_BATCH_LINGER),
            max_lag: terra_projector::DEFAULT_MAX_LAG,
        }
    }
}

/// `[sql]`: the SQL projection's database (also what `query` reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlSection {
    /// Default: `sqlite://<data_dir>/terra.db`. It may carry the password: a secret.
    pub url: Option<SecretString>,
    /// A file holding `url` (a mounted secret).
    pub url_file: Option<PathBuf>,
    pub schema: String,
    /// Terra's Supabase tables; also presets the object store.
    pub supabase: bool,
    /// Apply migrations at start-up (`standalone` always does).
    pub migrate: bool,
}

impl Default for SqlSection {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            schema: terra_schema::DEFAULT_SCHEMA.to_owned(),
            supabase: false,
            migrate: false,
        }
    }
}

/// `[objects]`: the object projection's store and its SQS pings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectsSection {
    /// Default: `file://<data_dir>/objects`, or Supabase Storage's bucket with `sql.supabase`.
    pub url: Option<String>,
    pub prefix: String,
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    /// Default: on with `sql.supabase`, else off.
    pub s3_path_style: Option<bool>,
    pub s3_allow_http: bool,
    pub sqs_queue_url: Option<String>,
    pub sqs_endpoint: Option<String>,
    pub presign_expiry_secs: u64,
}

impl Default for ObjectsSection {
    fn default() -> Self {
        Self {
            url: None,
            prefix: String::new(),
            s3_endpoint: None,
            s3_region: DEFAULT_S3_REGION.to_owned(),
            s3_path_style: None,
            s3_allow_http: false,
            sqs_queue_url: None,
            sqs_endpoint: None,
            presign_expiry_secs: terra_sink_objects::ObjectSinkConfig::default()
                .expires_in
                .as_secs(),
        }
    }
}

/// `[query]`: the gRPC query service: address, authentication, TLS, limits, read pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySection {
    pub grpc_addr: SocketAddr,
    /// Bearer tokens clients must send (several during rotation).
    #[serde(deserialize_with = "one_or_many")]
    pub tokens: Vec<SecretString>,
    /// A file of bearer tokens, one per line.
    pub token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Clients must present a certificate chaining to this CA: mutual TLS.
    pub tls_client_ca: Option<PathBuf>,
    pub insecure_allow_unauthenticated: bool,
    pub insecure_allow_plaintext_tokens: bool,
    /// Seals page tokens and watch positions. Default: generated into the data dir.
    pub token_secret: Option<SecretString>,
    pub token_secret_file: Option<PathBuf>,
    pub timeout_secs: u64,
    pub max_in_flight: usize,
    pub max_watchers: usize,
    pub max_concurrent_streams: u32,
    pub keepalive_secs: u64,
    pub keepalive_timeout_secs: u64,
    /// 0: never.
    pub max_connection_age_secs: u64,
    pub pool_size: u32,
}

impl Default for QuerySection {
    fn default() -> Self {
        let limits = terra_query::Limits::default();
        Self {
            grpc_addr: DEFAULT_GRPC_ADDR,
            tokens: Vec::new(),
            token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            insecure_allow_unauthenticated: false,
            insecure_allow_plaintext_tokens: false,
            token_secret: None,
            token_secret_file: None,
            timeout_secs: limits.timeout.as_secs(),
            max_in_flight: limits.max_in_flight,
            max_watchers: limits.max_watchers,
            max_concurrent_streams: limits.max_concurrent_streams,
            keepalive_secs: limits.keepalive_interval.as_secs(),
            keepalive_timeout_secs: limits.keepalive_timeout.as_secs(),
            max_connection_age_secs: limits.max_connection_age.map_or(0, |age| age.as_secs()),
            pool_size: DEFAULT_QUERY_POOL_SIZE,
        }
    }
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySection {
    /// OTLP/gRPC collector; OTEL_EXPORTER_OTLP_ENDPOINT is the default.
    pub otlp_endpoint: Option<String>,
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A list, or one value for a list of one (a single flag such as `--signing-secret`, a
/// single environment variable).
pub(crate) fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::Many(list) => list,
        OneOrMany::One(one) => vec![one],
    })
}
