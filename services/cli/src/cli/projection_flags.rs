//! The flags of the projectors, the SQL database and the object store: one group per
//! section (`--supabase` and `--migrate` alone too, for the commands that take only them),
//! each flag's id the key it sets.

use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

/// Batches of the projectors (section `[projector]`).
#[derive(Debug, Clone, Default, Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub size: BatchSizeArgs,
    /// Longest wait for a batch to fill, milliseconds.
    #[arg(
        id = "projector.batch_wait_ms",
        long = "batch-wait-ms",
        env = "TERRA_INGEST_BATCH_WAIT_MS",
        value_name = "MS"
    )]
    pub batch_wait_ms: Option<u64>,
    /// How long a started batch stays open for more records, milliseconds (0: none).
    #[arg(
        id = "projector.batch_linger_ms",
        long = "batch-linger-ms",
        env = "TERRA_INGEST_BATCH_LINGER_MS",
        value_name = "MS"
    )]
    pub batch_linger_ms: Option<u64>,
}

/// `standalone` only: how far its projections may fall behind its ingress.
#[derive(Debug, Clone, Default, Args)]
pub struct MaxLagArgs {
    /// Records a projection may be behind the log before new webhooks are held while its lag
    /// grows past its best (up to 2 s each, then accepted; 0: never held).
    #[arg(
        id = "projector.max_lag",
        long = "max-lag",
        env = "TERRA_INGEST_MAX_LAG",
        value_name = "RECORDS"
    )]
    pub max_lag: Option<u64>,
}

/// `--batch-size` alone (`rebuild` has no wait: it reads the log to its end).
#[derive(Debug, Clone, Default, Args)]
pub struct BatchSizeArgs {
    /// Most log records per projector batch (one transaction).
    #[arg(
        id = "projector.batch_size",
        long = "batch-size",
        env = "TERRA_INGEST_BATCH_SIZE",
        value_name = "N"
    )]
    pub batch_size: Option<usize>,
}

/// A projector run alone: its health endpoint and batches (section `[projector]`).
#[derive(Debug, Clone, Default, Args)]
pub struct ProjectorArgs {
    /// Address of the projector's HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        id = "projector.http_addr",
        long = "http-addr",
        env = "TERRA_INGEST_HTTP_ADDR",
        value_name = "ADDR"
    )]
    pub http_addr: Option<String>,
    #[command(flatten)]
    pub batch: BatchArgs,
}

/// Where the SQL projection writes (section `[sql]`).
#[derive(Debug, Clone, Default, Args)]
pub struct SqlArgs {
    /// Database for Terra's tables: postgres://…, mysql://… (MariaDB too) or sqlite://PATH.
    /// Default: sqlite://<data-dir>/terra.db.
    #[arg(
        id = "sql.url",
        long = "sql",
        env = "TERRA_INGEST_SQL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub sql: Option<SecretString>,
    /// File holding the --sql URL (it may carry the database password; a mounted secret).
    #[arg(
        id = "sql.url_file",
        long = "sql-file",
        env = "TERRA_INGEST_SQL_FILE",
        value_name = "PATH"
    )]
    pub sql_file: Option<PathBuf>,
    /// Postgres schema of the tables (default `terra`, as Terra uses).
    #[arg(
        id = "sql.schema",
        long = "sql-schema",
        env = "TERRA_INGEST_SQL_SCHEMA",
        value_name = "NAME"
    )]
    pub sql_schema: Option<String>,
    #[command(flatten)]
    pub supabase: SupabaseArgs,
}

/// `--supabase` (key `sql.supabase`): the table variant, and the object store's preset.
#[derive(Debug, Clone, Default, Args)]
pub struct SupabaseArgs {
    /// Terra's Supabase variant (typed columns, payload_id keys, cascading foreign keys); for
    /// the objects, Supabase Storage's bucket with path-style requests.
    #[arg(
        id = "sql.supabase",
        long = "supabase",
        env = "TERRA_INGEST_SUPABASE",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub supabase: Option<bool>,
}

/// `--migrate` (key `sql.migrate`).
#[derive(Debug, Clone, Default, Args)]
pub struct MigrateFlag {
    /// Apply migrations at start-up (`standalone` always does).
    #[arg(
        id = "sql.migrate",
        long = "migrate",
        env = "TERRA_INGEST_MIGRATE",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub migrate: Option<bool>,
}

/// Where the object projection writes, and where its SQS pings go (section `[objects]`).
#[derive(Debug, Clone, Default, Args)]
pub struct ObjectArgs {
    /// Object store for Terra's bucket layout: file://PATH, s3://BUCKET, gs://BUCKET or
    /// az://CONTAINER. Default: file://<data-dir>/objects (s3://terra-payloads with --supabase).
    #[arg(
        id = "objects.url",
        long = "objects",
        env = "TERRA_INGEST_OBJECTS",
        value_name = "URL"
    )]
    pub objects: Option<String>,
    /// Key prefix inside the bucket.
    #[arg(
        id = "objects.prefix",
        long = "objects-prefix",
        env = "TERRA_INGEST_OBJECTS_PREFIX",
        value_name = "PREFIX"
    )]
    pub objects_prefix: Option<String>,
    /// S3-compatible endpoint (MinIO, Supabase Storage's /storage/v1/s3, a test server).
    #[arg(
        id = "objects.s3_endpoint",
        long = "s3-endpoint",
        env = "TERRA_INGEST_S3_ENDPOINT",
        value_name = "URL"
    )]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1).
    #[arg(
        id = "objects.s3_region",
        long = "s3-region",
        env = "TERRA_INGEST_S3_REGION",
        value_name = "REGION"
    )]
    pub s3_region: Option<String>,
    /// Path-style S3 requests (MinIO, Supabase).
    #[arg(
        id = "objects.s3_path_style",
        long = "s3-path-style",
        env = "TERRA_INGEST_S3_PATH_STYLE",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub s3_path_style: Option<bool>,
    /// Allow plain-HTTP object store and SQS endpoints (local servers only).
    #[arg(
        id = "objects.s3_allow_http",
        long = "s3-allow-http",
        env = "TERRA_INGEST_S3_ALLOW_HTTP",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub s3_allow_http: Option<bool>,
    /// SQS queue URL: after each object is stored, an s3_payload ping with a pre-signed URL.
    #[arg(
        id = "objects.sqs_queue_url",
        long = "sqs-queue-url",
        env = "TERRA_INGEST_SQS_QUEUE_URL",
        value_name = "URL"
    )]
    pub sqs_queue_url: Option<String>,
    /// SQS-compatible endpoint instead of AWS's.
    #[arg(
        id = "objects.sqs_endpoint",
        long = "sqs-endpoint",
        env = "TERRA_INGEST_SQS_ENDPOINT",
        value_name = "URL"
    )]
    pub sqs_endpoint: Option<String>,
    /// Lifetime of the pre-signed URLs in pings, seconds.
    #[arg(
        id = "objects.presign_expiry_secs",
        long = "presign-expiry-secs",
        env = "TERRA_INGEST_PRESIGN_EXPIRY_SECS",
        value_name = "SECS"
    )]
    pub presign_expiry_secs: Option<u64>,
}
