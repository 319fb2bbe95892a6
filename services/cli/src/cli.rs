//! Command-line interface. Every setting of the services is a flag with a `TERRA_INGEST_*`
//! environment twin; flags win over the environment, which wins over the `--config` TOML
//! file, which wins over the defaults.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

#[derive(Debug, Parser)]
#[command(
    name = "terra-ingest",
    version,
    about = "Self-hosted ingestion of Terra health-data webhooks"
)]
pub struct Cli {
    /// TOML configuration file (see terra-ingest.example.toml).
    #[arg(long, global = true, env = "TERRA_INGEST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log output format.
    #[arg(long, global = true, env = "TERRA_INGEST_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every service in one process on the embedded defaults (log and SQLite under ./data).
    Standalone(Box<StandaloneArgs>),
    /// The ingress service alone: verify webhooks and append them to the log.
    Ingress(ServeArgs),
    /// Run a projector alone: consume the log and write a projection.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// The gRPC query service alone (reads the SQL tables and the object store).
    Query(Box<QueryCommandArgs>),
    /// Create or update the SQL tables (Terra's and terra-ingest's own), then exit.
    Migrate(ProjectArgs),
    /// Replay the log from the start into fresh tables, then swap them in atomically.
    #[command(subcommand)]
    Rebuild(RebuildCommand),
    /// Sign a body the way Terra does and POST it.
    Send(SendArgs),
    /// Check a captured delivery offline; exit code 0 only when the signature is valid.
    Verify(VerifyArgs),
}

/// Settings of the long-running services.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Folder for the embedded log and generated files.
    #[arg(long, env = "TERRA_INGEST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the HTTP ingress listens on.
    #[arg(long, env = "TERRA_INGEST_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Address the gRPC query service listens on (`standalone` and `query`).
    #[arg(long, env = "TERRA_INGEST_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// Event log: `embedded`, `embedded:PATH`, `kafka://HOST:PORT/TOPIC[?partitions=N&replication=N]`
    /// or `kafka-mock://TOPIC` (in-process mock cluster, not durable).
    #[arg(long, env = "TERRA_INGEST_LOG")]
    pub log: Option<String>,
    /// Signing secret of the default source (the value Terra's dashboard shows).
    #[arg(long, env = "TERRA_INGEST_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<SecretString>,
    /// File holding the default source's signing secret(s), one per line (rotation).
    #[arg(long, env = "TERRA_INGEST_SIGNING_SECRET_FILE")]
    pub signing_secret_file: Option<PathBuf>,
    /// Replay window of the default source, seconds.
    #[arg(long, env = "TERRA_INGEST_TOLERANCE_SECS")]
    pub tolerance_secs: Option<u64>,
    /// Allowlist of the default source: CIDRs, addresses or `terra` (Terra's published IPs),
    /// comma separated. Off when unset.
    #[arg(long, env = "TERRA_INGEST_ALLOW", value_delimiter = ',')]
    pub allow: Option<Vec<String>>,
    /// Proxies (CIDRs) whose X-Forwarded-For the default source believes, comma separated.
    #[arg(long, env = "TERRA_INGEST_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Largest accepted webhook body, bytes.
    #[arg(long, env = "TERRA_INGEST_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// Serve `/readyz` and `/metrics` on this address instead of the webhook port.
    #[arg(long, env = "TERRA_INGEST_OPS_ADDR")]
    pub ops_addr: Option<String>,
    /// Longest wait for the log to confirm an append before answering 503, ms.
    #[arg(long, env = "TERRA_INGEST_APPEND_TIMEOUT_MS")]
    pub append_timeout_ms: Option<u64>,
    /// A request's headers must arrive within this time (also the idle keep-alive time), ms.
    #[arg(long, env = "TERRA_INGEST_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// The body must arrive within this time after the headers (408 otherwise), ms.
    #[arg(long, env = "TERRA_INGEST_BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// A webhook is answered within this time after its headers (503 otherwise), ms.
    #[arg(long, env = "TERRA_INGEST_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Open connections at most; one more is answered 503.
    #[arg(long, env = "TERRA_INGEST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Webhook requests handled at once at most; one more is answered 503.
    #[arg(long, env = "TERRA_INGEST_MAX_IN_FLIGHT_REQUESTS")]
    pub max_in_flight_requests: Option<usize>,
    /// Body bytes held by requests in flight at most; a body that does not fit gets 503.
    #[arg(long, env = "TERRA_INGEST_MAX_IN_FLIGHT_BYTES")]
    pub max_in_flight_bytes: Option<usize>,
    /// Deliveries the replay cache remembers over the tolerance window (0: off).
    #[arg(long, env = "TERRA_INGEST_REPLAY_CACHE_ENTRIES")]
    pub replay_cache_entries: Option<usize>,
    /// Refused requests logged per second at most (the metrics count every one).
    #[arg(long, env = "TERRA_INGEST_REJECTION_LOGS_PER_SEC")]
    pub rejection_logs_per_sec: Option<u32>,
    /// OTLP/gRPC endpoint for traces (for example http://otel-collector:4317); also read
    /// from OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, env = "TERRA_INGEST_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// `standalone`: the ingress settings plus the SQL projection's.
#[derive(Debug, Clone, Default, Args)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub sql: SqlArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
    #[command(flatten)]
    pub query: QueryArgs,
}

/// Authentication and TLS of the gRPC query service.
#[derive(Debug, Clone, Default, Args)]
pub struct QueryArgs {
    /// Bearer token(s) gRPC clients must send (comma separated; several during rotation).
    #[arg(
        long = "grpc-token",
        env = "TERRA_INGEST_GRPC_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub grpc_tokens: Vec<SecretString>,
    /// File with bearer tokens, one per line (a mounted Kubernetes secret).
    #[arg(long, env = "TERRA_INGEST_GRPC_TOKEN_FILE")]
    pub grpc_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) of the gRPC service.
    #[arg(long, env = "TERRA_INGEST_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the gRPC service.
    #[arg(long, env = "TERRA_INGEST_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: mutual TLS.
    #[arg(
        long,
        env = "TERRA_INGEST_GRPC_TLS_CLIENT_CA",
        requires = "grpc_tls_cert"
    )]
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// Serve a non-loopback --grpc-addr with no token and no mutual TLS.
    #[arg(long, env = "TERRA_INGEST_INSECURE_ALLOW_UNAUTHENTICATED")]
    pub insecure_allow_unauthenticated: bool,
    /// Key sealing page tokens and watch positions (default: generated into the data dir).
    #[arg(long, env = "TERRA_INGEST_QUERY_TOKEN_SECRET", hide_env_values = true)]
    pub query_token_secret: Option<SecretString>,
    /// File holding the token-sealing key (a mounted secret).
    #[arg(long, env = "TERRA_INGEST_QUERY_TOKEN_SECRET_FILE")]
    pub query_token_secret_file: Option<PathBuf>,
    /// Accept bearer tokens in plaintext on a non-loopback --grpc-addr (only where the
    /// network encrypts by itself, such as a service mesh).
    #[arg(long, env = "TERRA_INGEST_GRPC_INSECURE_ALLOW_PLAINTEXT_TOKENS")]
    pub grpc_insecure_allow_plaintext_tokens: bool,
    /// Longest a query call may take, seconds (default 30); a client's shorter deadline wins.
    #[arg(long, env = "TERRA_INGEST_GRPC_TIMEOUT_SECS")]
    pub grpc_timeout_secs: Option<u64>,
    /// Query calls served at once (default 256); one more fails with RESOURCE_EXHAUSTED.
    #[arg(long, env = "TERRA_INGEST_GRPC_MAX_IN_FLIGHT")]
    pub grpc_max_in_flight: Option<usize>,
    /// Live tails (WatchPayloads) served at once (default 256); one more fails with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "TERRA_INGEST_GRPC_MAX_WATCHERS")]
    pub grpc_max_watchers: Option<usize>,
    /// HTTP/2 streams one connection may have open at once (default 100).
    #[arg(long, env = "TERRA_INGEST_GRPC_MAX_CONCURRENT_STREAMS")]
    pub grpc_max_concurrent_streams: Option<u32>,
    /// Idle seconds before the server pings a client (HTTP/2 PING and TCP keepalive;
    /// default 30).
    #[arg(long, env = "TERRA_INGEST_GRPC_KEEPALIVE_SECS")]
    pub grpc_keepalive_secs: Option<u64>,
    /// Seconds a ping may go unanswered before the connection is closed (default 10).
    #[arg(long, env = "TERRA_INGEST_GRPC_KEEPALIVE_TIMEOUT_SECS")]
    pub grpc_keepalive_timeout_secs: Option<u64>,
    /// Age in seconds at which a connection is asked to reconnect (GOAWAY), so clients
    /// spread over replicas; calls in progress finish (default 0: never).
    #[arg(long, env = "TERRA_INGEST_GRPC_MAX_CONNECTION_AGE_SECS")]
    pub grpc_max_connection_age_secs: Option<u64>,
    /// Connections of the query service's own read pool (default 8); in `standalone` it is
    /// apart from the projector's, so long queries cannot stall it.
    #[arg(long, env = "TERRA_INGEST_QUERY_POOL_SIZE")]
    pub query_pool_size: Option<u32>,
}

/// `terra-ingest query`: the gRPC service alone.
#[derive(Debug, Clone, Args)]
pub struct QueryCommandArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
    #[command(flatten)]
    pub query: QueryArgs,
    /// Address the gRPC query service listens on (default 127.0.0.1:50051).
    #[arg(long, env = "TERRA_INGEST_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
}

/// Where the object projection writes, and where its SQS pings go.
#[derive(Debug, Clone, Default, Args)]
pub struct ObjectArgs {
    /// Object store for Terra's bucket layout: file://PATH, s3://BUCKET, gs://BUCKET or
    /// az://CONTAINER. Default: file://<data-dir>/objects (s3://terra-payloads with --supabase).
    #[arg(long, env = "TERRA_INGEST_OBJECTS")]
    pub objects: Option<String>,
    /// Key prefix inside the bucket.
    #[arg(long, env = "TERRA_INGEST_OBJECTS_PREFIX")]
    pub objects_prefix: Option<String>,
    /// S3-compatible endpoint (MinIO, Supabase Storage's /storage/v1/s3, a test server).
    #[arg(long, env = "TERRA_INGEST_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, env = "TERRA_INGEST_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style S3 requests (MinIO, Supabase).
    #[arg(long, env = "TERRA_INGEST_S3_PATH_STYLE", num_args = 0..=1, default_missing_value = "true")]
    pub s3_path_style: Option<bool>,
    /// Allow plain-HTTP object store and SQS endpoints (local servers only).
    #[arg(long, env = "TERRA_INGEST_S3_ALLOW_HTTP", num_args = 0..=1, default_missing_value = "true")]
    pub s3_allow_http: Option<bool>,
    /// SQS queue URL: after each object is stored, an s3_payload ping with a pre-signed URL.
    #[arg(long, env = "TERRA_INGEST_SQS_QUEUE_URL")]
    pub sqs_queue_url: Option<String>,
    /// SQS-compatible endpoint instead of AWS's.
    #[arg(long, env = "TERRA_INGEST_SQS_ENDPOINT")]
    pub sqs_endpoint: Option<String>,
    /// Lifetime of the pre-signed URLs in pings, seconds.
    #[arg(long, env = "TERRA_INGEST_PRESIGN_EXPIRY_SECS")]
    pub presign_expiry_secs: Option<u64>,
}

/// Where and how the SQL projection writes.
#[derive(Debug, Clone, Default, Args)]
pub struct SqlArgs {
    /// Database for Terra's tables: postgres://…, mysql://… (MariaDB too) or sqlite://PATH.
    /// Default: sqlite://<data-dir>/terra.db.
    #[arg(long, env = "TERRA_INGEST_SQL", hide_env_values = true)]
    pub sql: Option<SecretString>,
    /// File holding the --sql URL (it may carry the database password; a mounted secret).
    #[arg(long, env = "TERRA_INGEST_SQL_FILE")]
    pub sql_file: Option<PathBuf>,
    /// Postgres schema of the tables (default `terra`, as Terra uses).
    #[arg(long, env = "TERRA_INGEST_SQL_SCHEMA")]
    pub sql_schema: Option<String>,
    /// Terra's Supabase table variant (typed columns, payload_id keys, cascading foreign keys).
    #[arg(long, env = "TERRA_INGEST_SUPABASE", num_args = 0..=1, default_missing_value = "true")]
    pub supabase: Option<bool>,
    /// Most log records per projector batch (one transaction).
    #[arg(long, env = "TERRA_INGEST_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Longest wait for a batch to fill, milliseconds.
    #[arg(long, env = "TERRA_INGEST_BATCH_WAIT_MS")]
    pub batch_wait_ms: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Terra's SQL tables on Postgres, MySQL/MariaDB or SQLite.
    Sql(ProjectArgs),
    /// Terra's bucket layout on S3, GCS, Azure, Supabase Storage or a folder; SQS pings.
    Objects(ProjectObjectsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ProjectObjectsArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
}

#[derive(Debug, Subcommand)]
pub enum RebuildCommand {
    /// Rebuild the SQL tables (embedded log: stop the process holding it first).
    Sql(RebuildArgs),
}

/// Settings of `project`, `migrate` and `rebuild`.
#[derive(Debug, Clone, Default, Args)]
pub struct ProjectArgs {
    /// Folder of the embedded log (and the default SQLite file).
    #[arg(long, env = "TERRA_INGEST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The event log (see `standalone --help`).
    #[arg(long, env = "TERRA_INGEST_LOG")]
    pub log: Option<String>,
    /// Address of the projector's HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "TERRA_INGEST_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Apply migrations at start-up (`standalone` always does).
    #[arg(long, env = "TERRA_INGEST_MIGRATE", num_args = 0..=1, default_missing_value = "true")]
    pub migrate: Option<bool>,
    /// OTLP/gRPC endpoint for traces.
    #[arg(long, env = "TERRA_INGEST_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub sql: SqlArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Keep the replaced tables (renamed old<unix ms>_*) instead of dropping them.
    #[arg(long)]
    pub keep_old: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Where to POST, e.g. http://127.0.0.1:8080/webhook.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhook")]
    pub url: String,
    /// Signing secret. Default: the one standalone generated in --data-dir.
    #[arg(long, env = "TERRA_INGEST_SIGNING_SECRET", hide_env_values = true)]
    pub secret: Option<SecretString>,
    /// File holding the signing secret (its first line).
    #[arg(long, env = "TERRA_INGEST_SIGNING_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Data folder of a standalone instance, to read its generated secret from.
    #[arg(long, env = "TERRA_INGEST_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Body file to send, byte for byte.
    #[arg(long, conflicts_with = "fixture", required_unless_present = "fixture")]
    pub file: Option<PathBuf>,
    /// A built-in sample body by name (e.g. sleep, auth, user_reauth).
    #[arg(long)]
    pub fixture: Option<String>,
    /// Extra request headers, `Name: value` (e.g. X-Terra-Ordering-Timestamp).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Sign as of this unix time (seconds) instead of now. The same body signed at the same
    /// second is the same delivery: the ingress answers it again without storing it twice.
    #[arg(long)]
    pub at: Option<i64>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The signing secret (several flags for several secrets).
    #[arg(long, required_unless_present = "secret_file")]
    pub secret: Vec<SecretString>,
    /// File holding the signing secret(s), one per line.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// The captured terra-signature header value.
    #[arg(long)]
    pub header: String,
    /// The captured body, byte for byte.
    #[arg(long)]
    pub file: PathBuf,
    /// Clock to verify at (unix seconds), for old captures. Default: now.
    #[arg(long)]
    pub at: Option<i64>,
    /// Replay window, seconds.
    #[arg(long, default_value_t = terra_core::signature::DEFAULT_TOLERANCE_SECS)]
    pub tolerance_secs: u64,
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Standalone(args) => {
            let args = *args;
            crate::serve::run(
                cli.config,
                cli.log_format,
                args.serve,
                Some((args.sql, args.objects, args.query)),
            )
            .await
        }
        Command::Ingress(args) => crate::serve::run(cli.config, cli.log_format, args, None).await,
        Command::Project(ProjectCommand::Sql(args)) => {
            crate::project::project_sql(cli.config, cli.log_format, args).await
        }
        Command::Project(ProjectCommand::Objects(args)) => {
            crate::project::project_objects(cli.config, cli.log_format, args).await
        }
        Command::Query(args) => crate::query::run(cli.config, cli.log_format, *args).await,
        Command::Migrate(args) => crate::project::migrate(cli.config, cli.log_format, args).await,
        Command::Rebuild(RebuildCommand::Sql(args)) => {
            crate::project::rebuild_sql(cli.config, cli.log_format, args).await
        }
        Command::Send(args) => crate::send::run(args).await,
        Command::Verify(args) => Ok(crate::verify::run(&args)),
    }
}
