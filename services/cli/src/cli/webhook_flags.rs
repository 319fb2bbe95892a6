//! The webhook destination's flags (section `[webhooks]`): one endpoint from the command line
//! (more, with every setting, in the config file's `[[webhooks.endpoints]]`), and the address
//! guard's allowlist.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Default, Args)]
pub struct WebhookArgs {
    /// Deliver every event to this URL (one endpoint, named by --webhook-name), signed as
    /// Terra signs, with Terra's retries.
    #[arg(
        id = "webhooks.url",
        long = "webhook-url",
        env = "TERRA_INGEST_WEBHOOK_URL",
        value_name = "URL"
    )]
    pub url: Option<String>,
    /// File holding the endpoint's signing secret (two lines during a rotation).
    #[arg(
        id = "webhooks.secret_file",
        long = "webhook-secret-file",
        env = "TERRA_INGEST_WEBHOOK_SECRET_FILE",
        value_name = "PATH"
    )]
    pub secret_file: Option<PathBuf>,
    /// Name of the --webhook-url endpoint (default `default`).
    #[arg(
        id = "webhooks.name",
        long = "webhook-name",
        env = "TERRA_INGEST_WEBHOOK_NAME",
        value_name = "NAME"
    )]
    pub name: Option<String>,
    /// Delay before each attempt, comma separated (default Terra's:
    /// 0s,5m,30m,1h,2h,4h,8h,10h).
    #[arg(
        id = "webhooks.retry_schedule",
        long = "webhook-retry-schedule",
        env = "TERRA_INGEST_WEBHOOK_RETRY_SCHEDULE",
        value_name = "DELAYS"
    )]
    pub retry_schedule: Option<String>,
    /// `terra` (default), `standard` (Standard Webhooks) or `both`.
    #[arg(
        id = "webhooks.signature",
        long = "webhook-signature",
        env = "TERRA_INGEST_WEBHOOK_SIGNATURE",
        value_name = "MODE"
    )]
    pub signature: Option<String>,
    /// `unordered` (default) or `per_user`.
    #[arg(
        id = "webhooks.ordering",
        long = "webhook-ordering",
        env = "TERRA_INGEST_WEBHOOK_ORDERING",
        value_name = "ORDER"
    )]
    pub ordering: Option<String>,
    /// Ranges the address guard lets deliveries reach (it refuses loopback, private,
    /// link-local, CGNAT, multicast and metadata addresses otherwise), comma separated.
    #[arg(
        id = "webhooks.allow_cidrs",
        long = "webhook-allow-cidr",
        env = "TERRA_INGEST_WEBHOOK_ALLOW_CIDR",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub allow_cidrs: Option<Vec<String>>,
}
