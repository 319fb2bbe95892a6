//! Command-line interface. Each command flattens the groups of flags it uses, and only those
//! (`query` refuses `--body-limit`). Every setting flag names its configuration key as its
//! clap id (`ingress.body_limit`) and has a `TERRA_INGEST_*` environment twin; the layers
//! (defaults, TOML file, environment, flags) are merged by `crate::settings`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, Args, Parser, Subcommand};
use secrecy::SecretString;

pub use crate::settings::{KafkaProperty, LogFormat};
pub use ingress_flags::{DataDirArgs, IngressArgs, LogArgs, TelemetryArgs};
pub use projection_flags::{
    BatchArgs, BatchSizeArgs, MaxLagArgs, MigrateFlag, ObjectArgs, ProjectorArgs, SqlArgs,
    SupabaseArgs,
};
pub use query_flags::QueryArgs;
pub use webhook_flags::WebhookArgs;

mod ingress_flags;
mod projection_flags;
mod query_flags;
mod webhook_flags;

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
    #[arg(
        id = "telemetry.log_format",
        long = "log-format",
        global = true,
        env = "TERRA_INGEST_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT"
    )]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every service in one process on the embedded defaults (log and SQLite under ./data).
    Standalone(Box<StandaloneArgs>),
    /// The ingress service alone: verify webhooks and append them to the log.
    Ingress(IngressCommandArgs),
    /// Run a projector alone: consume the log and write a projection.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// The gRPC query service alone (reads the SQL tables and the object store).
    Query(Box<QueryCommandArgs>),
    /// Create or update the SQL tables (Terra's and terra-ingest's own), then exit.
    Migrate(MigrateArgs),
    /// Replay the log from the start into fresh tables, then swap them in atomically.
    #[command(subcommand)]
    Rebuild(RebuildCommand),
    /// Operator tools for the embedded log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Sign a body the way Terra does and POST it.
    Send(SendArgs),
    /// Check a captured delivery offline; exit code 0 only when the signature is valid.
    Verify(VerifyArgs),
    /// Webhook deliveries: endpoints and their backlog, deliveries, re-queue, disable, enable.
    #[command(subcommand)]
    Deliveries(crate::deliveries::DeliveriesCommand),
}

/// `standalone`: the ingress, both projectors and the query service.
#[derive(Debug, Clone, Default, Args)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub ingress: IngressArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub sql: SqlArgs,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub max_lag: MaxLagArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
    #[command(flatten)]
    pub query: QueryArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// `ingress`: the HTTP ingress and the log.
#[derive(Debug, Clone, Default, Args)]
pub struct IngressCommandArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub ingress: IngressArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// `query`: the gRPC service alone, over the SQL tables and the object store.
#[derive(Debug, Clone, Default, Args)]
pub struct QueryCommandArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub sql: SqlArgs,
    #[command(flatten)]
    pub migrate: MigrateFlag,
    #[command(flatten)]
    pub objects: ObjectArgs,
    #[command(flatten)]
    pub query: QueryArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Terra's SQL tables on Postgres, MySQL/MariaDB or SQLite.
    Sql(ProjectSqlArgs),
    /// Terra's bucket layout on S3, GCS, Azure, Supabase Storage or a folder; SQS pings.
    Objects(ProjectObjectsArgs),
    /// Every event forwarded to your endpoints, signed as Terra signs, with Terra's retries
    /// (schedule and attempts kept in the --sql database; replicas share the work).
    Webhooks(ProjectWebhooksArgs),
}

/// `project webhooks`.
#[derive(Debug, Clone, Default, Args)]
pub struct ProjectWebhooksArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub projector: ProjectorArgs,
    #[command(flatten)]
    pub sql: SqlArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// `project sql`.
#[derive(Debug, Clone, Default, Args)]
pub struct ProjectSqlArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub projector: ProjectorArgs,
    #[command(flatten)]
    pub sql: SqlArgs,
    #[command(flatten)]
    pub migrate: MigrateFlag,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// `project objects`: no database; `--supabase` presets the bucket.
#[derive(Debug, Clone, Default, Args)]
pub struct ProjectObjectsArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub projector: ProjectorArgs,
    #[command(flatten)]
    pub supabase: SupabaseArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// `migrate`: the SQL tables only.
#[derive(Debug, Clone, Default, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub sql: SqlArgs,
}

#[derive(Debug, Subcommand)]
pub enum RebuildCommand {
    /// Rebuild the SQL tables (embedded log: stop the process holding it first).
    Sql(RebuildArgs),
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Keep every intact record of a damaged embedded log, each at its offset, and move the
    /// damaged files aside (stop the process holding the log first).
    Repair(LogRepairArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LogRepairArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub sql: SqlArgs,
    #[command(flatten)]
    pub batch_size: BatchSizeArgs,
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

/// Runs the parsed command. `matches` are the same parse as `cli`: the settings layers read
/// which flags were given from them.
pub(crate) async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    // the services' settings: every layer merged and typed once, before anything starts
    let config = || crate::settings::load(cli.config.as_deref(), matches);
    match cli.command {
        Command::Standalone(_) => crate::serve::run(config()?, true).await,
        Command::Ingress(_) => crate::serve::run(config()?, false).await,
        Command::Project(ProjectCommand::Sql(_)) => crate::project::project_sql(config()?).await,
        Command::Project(ProjectCommand::Objects(_)) => {
            crate::project::project_objects(config()?).await
        }
        Command::Project(ProjectCommand::Webhooks(_)) => {
            crate::webhooks::project_webhooks(config()?).await
        }
        Command::Query(_) => crate::query::run(config()?).await,
        Command::Migrate(_) => crate::project::migrate(config()?).await,
        Command::Rebuild(RebuildCommand::Sql(ref args)) => {
            crate::project::rebuild_sql(config()?, args.keep_old, args.quiet).await
        }
        Command::Log(LogCommand::Repair(_)) => crate::project::repair_log(config()?),
        Command::Send(args) => crate::send::run(args).await,
        Command::Verify(args) => Ok(crate::verify::run(&args)),
        Command::Deliveries(command) => crate::deliveries::run(config()?, command).await,
    }
}
