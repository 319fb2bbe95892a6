//! The flags of the data dir, the ingress, the event log and telemetry: one group per
//! section, each flag's id the key it sets.

use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

use super::KafkaProperty;

/// `--data-dir` (key `data_dir`).
#[derive(Debug, Clone, Default, Args)]
pub struct DataDirArgs {
    /// Folder for the embedded log, the default SQLite file and generated secrets.
    #[arg(
        id = "data_dir",
        long = "data-dir",
        env = "TERRA_INGEST_DATA_DIR",
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,
}

/// The HTTP ingress and its default source (section `[ingress]`).
#[derive(Debug, Clone, Default, Args)]
pub struct IngressArgs {
    /// Address the HTTP ingress listens on.
    #[arg(
        id = "ingress.http_addr",
        long = "http-addr",
        env = "TERRA_INGEST_HTTP_ADDR",
        value_name = "ADDR"
    )]
    pub http_addr: Option<String>,
    /// Serve `/readyz` and `/metrics` on this address instead of the webhook port.
    #[arg(
        id = "ingress.ops_addr",
        long = "ops-addr",
        env = "TERRA_INGEST_OPS_ADDR",
        value_name = "ADDR"
    )]
    pub ops_addr: Option<String>,
    /// Signing secret of the default source (the value Terra's dashboard shows).
    #[arg(
        id = "ingress.sources.default.secrets",
        long = "signing-secret",
        env = "TERRA_INGEST_SIGNING_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub signing_secret: Option<SecretString>,
    /// File holding the default source's signing secret(s), one per line (rotation).
    #[arg(
        id = "ingress.sources.default.secret_files",
        long = "signing-secret-file",
        env = "TERRA_INGEST_SIGNING_SECRET_FILE",
        value_name = "PATH"
    )]
    pub signing_secret_file: Option<PathBuf>,
    /// Replay window of the default source, seconds.
    #[arg(
        id = "ingress.sources.default.tolerance_secs",
        long = "tolerance-secs",
        env = "TERRA_INGEST_TOLERANCE_SECS",
        value_name = "SECS"
    )]
    pub tolerance_secs: Option<u64>,
    /// Allowlist of the default source: CIDRs, addresses or `terra` (Terra's published IPs),
    /// comma separated. Off when unset.
    #[arg(
        id = "ingress.sources.default.allow",
        long = "allow",
        env = "TERRA_INGEST_ALLOW",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub allow: Option<Vec<String>>,
    /// Proxies (CIDRs) whose X-Forwarded-For the default source believes, comma separated.
    #[arg(
        id = "ingress.sources.default.trusted_proxies",
        long = "trusted-proxies",
        env = "TERRA_INGEST_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub trusted_proxies: Option<Vec<String>>,
    /// Largest accepted webhook body, bytes.
    #[arg(
        id = "ingress.body_limit",
        long = "body-limit",
        env = "TERRA_INGEST_BODY_LIMIT",
        value_name = "BYTES"
    )]
    pub body_limit: Option<usize>,
    /// Longest wait for the log to confirm an append before answering 503, ms.
    #[arg(
        id = "ingress.append_timeout_ms",
        long = "append-timeout-ms",
        env = "TERRA_INGEST_APPEND_TIMEOUT_MS",
        value_name = "MS"
    )]
    pub append_timeout_ms: Option<u64>,
    /// A request's headers must arrive within this time (also the idle keep-alive time), ms.
    #[arg(
        id = "ingress.header_read_timeout_ms",
        long = "header-read-timeout-ms",
        env = "TERRA_INGEST_HEADER_READ_TIMEOUT_MS",
        value_name = "MS"
    )]
    pub header_read_timeout_ms: Option<u64>,
    /// The body must arrive within this time after the headers (408 otherwise), ms.
    #[arg(
        id = "ingress.body_read_timeout_ms",
        long = "body-read-timeout-ms",
        env = "TERRA_INGEST_BODY_READ_TIMEOUT_MS",
        value_name = "MS"
    )]
    pub body_read_timeout_ms: Option<u64>,
    /// A webhook is answered within this time after its headers (503 otherwise), ms.
    #[arg(
        id = "ingress.request_timeout_ms",
        long = "request-timeout-ms",
        env = "TERRA_INGEST_REQUEST_TIMEOUT_MS",
        value_name = "MS"
    )]
    pub request_timeout_ms: Option<u64>,
    /// Open connections at most; one more is answered 503.
    #[arg(
        id = "ingress.max_connections",
        long = "max-connections",
        env = "TERRA_INGEST_MAX_CONNECTIONS",
        value_name = "N"
    )]
    pub max_connections: Option<usize>,
    /// Webhook requests handled at once at most; one more is answered 503.
    #[arg(
        id = "ingress.max_in_flight_requests",
        long = "max-in-flight-requests",
        env = "TERRA_INGEST_MAX_IN_FLIGHT_REQUESTS",
        value_name = "N"
    )]
    pub max_in_flight_requests: Option<usize>,
    /// Body bytes held by requests in flight at most; a body that does not fit gets 503.
    #[arg(
        id = "ingress.max_in_flight_bytes",
        long = "max-in-flight-bytes",
        env = "TERRA_INGEST_MAX_IN_FLIGHT_BYTES",
        value_name = "BYTES"
    )]
    pub max_in_flight_bytes: Option<usize>,
    /// Deliveries the replay cache remembers over the tolerance window (0: off).
    #[arg(
        id = "ingress.replay_cache_entries",
        long = "replay-cache-entries",
        env = "TERRA_INGEST_REPLAY_CACHE_ENTRIES",
        value_name = "N"
    )]
    pub replay_cache_entries: Option<usize>,
    /// Refused requests logged per second at most (the metrics count every one).
    #[arg(
        id = "ingress.rejection_logs_per_sec",
        long = "rejection-logs-per-sec",
        env = "TERRA_INGEST_REJECTION_LOGS_PER_SEC",
        value_name = "N"
    )]
    pub rejection_logs_per_sec: Option<u32>,
}

/// The event log (section `[log]`).
#[derive(Debug, Clone, Default, Args)]
pub struct LogArgs {
    /// Event log: `embedded`, `embedded:PATH`, `kafka://HOST:PORT/TOPIC[?partitions=N&replication=N]`
    /// or `kafka-mock://TOPIC` (in-process mock cluster, not durable).
    #[arg(
        id = "log.url",
        long = "log",
        env = "TERRA_INGEST_LOG",
        value_name = "URL"
    )]
    pub log: Option<String>,
    /// Kafka: replicas every partition of the topic must have (created so, checked at start).
    /// Default 3, lowered with a warning on a cluster of fewer brokers.
    #[arg(
        id = "log.replication_factor",
        long = "log-replication-factor",
        env = "TERRA_INGEST_LOG_REPLICATION_FACTOR",
        value_name = "N"
    )]
    pub replication_factor: Option<u32>,
    /// Kafka: the topic's min.insync.replicas, the replicas an append must reach before it is
    /// acknowledged. Default 2, at most the replication factor minus one.
    #[arg(
        id = "log.min_insync_replicas",
        long = "log-min-insync-replicas",
        env = "TERRA_INGEST_LOG_MIN_INSYNC_REPLICAS",
        value_name = "N"
    )]
    pub min_insync_replicas: Option<u32>,
    /// Kafka: an existing topic that can lose records (finite retention, compaction, fewer
    /// replicas than wanted, unclean leader election) is warned about or refused.
    #[arg(
        id = "log.unsafe_topic",
        long = "log-unsafe-topic",
        env = "TERRA_INGEST_LOG_UNSAFE_TOPIC",
        value_name = "warn|refuse"
    )]
    pub unsafe_topic: Option<crate::settings::UnsafeTopic>,
    /// A librdkafka property, `NAME=VALUE` (repeat the flag; the value may be `env:VAR` or
    /// `file:PATH`). Environment: TERRA_INGEST_KAFKA_<NAME> with `.` as `_`
    /// (TERRA_INGEST_KAFKA_SASL_MECHANISM sets sasl.mechanism).
    #[arg(id = "log.kafka", long = "kafka", value_name = "NAME=VALUE")]
    pub kafka: Vec<KafkaProperty>,
}

/// Traces (section `[telemetry]`; `--log-format` is global).
#[derive(Debug, Clone, Default, Args)]
pub struct TelemetryArgs {
    /// OTLP/gRPC endpoint for traces (for example http://otel-collector:4317); also read
    /// from OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(
        id = "telemetry.otlp_endpoint",
        long = "otlp-endpoint",
        env = "TERRA_INGEST_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,
}
