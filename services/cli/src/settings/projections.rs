//! The projections' settings, checked: the SQL database, the projectors' batches and the
//! object store with its SQS pings.

use std::time::Duration;

use anyhow::bail;
use secrecy::ExposeSecret;
use terra_schema::{Dialect, SqlConfig, Variant};
use terra_sink_objects::{ObjectSinkConfig, SqsConfig, StoreConfig};

use super::config::Config;
use super::names;
use super::secrets::value_or_file;

/// The SQLite file of the default SQL projection, in the data dir.
pub const DEFAULT_SQLITE_FILE: &str = "terra.db";

/// The SQL projection's database, checked.
#[derive(Debug, Clone)]
pub struct SqlSettings {
    pub config: SqlConfig,
    /// Apply migrations at start-up.
    pub migrate: bool,
}

/// Checks the SQL settings; the default database is SQLite in the data dir.
pub fn resolve_sql(config: &Config) -> anyhow::Result<SqlSettings> {
    let section = &config.sql;
    let url = value_or_file(
        section.url.as_ref(),
        section.url_file.as_deref(),
        "sql.url",
        "sql.url_file",
    )?;
    let url = url.map_or_else(
        || {
            format!(
                "sqlite://{}",
                config.data_dir.join(DEFAULT_SQLITE_FILE).display()
            )
        },
        |url| url.expose_secret().to_owned(),
    );
    let dialect = Dialect::of_url(&url)
        .map_err(|e| anyhow::anyhow!("setting {}: {e}", names::setting("sql.url")))?;
    let mut sql = SqlConfig::new(url);
    sql.schema = section.schema.clone();
    if section.supabase {
        if dialect != Dialect::Postgres {
            bail!(
                "setting {}: needs a postgres:// sql.url (Supabase is Postgres)",
                names::setting("sql.supabase")
            );
        }
        sql.variant = Variant::Supabase;
    }
    // validate names now, so the error names the setting (connecting is lazy)
    sql.validate().map_err(|e| {
        anyhow::anyhow!(
            "setting {} / {}: {e}",
            names::setting("sql.url"),
            names::setting("sql.schema")
        )
    })?;
    Ok(SqlSettings {
        config: sql,
        migrate: section.migrate,
    })
}

/// The projectors' batches, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batches {
    /// Most log records per batch (one transaction).
    pub size: usize,
    /// Longest wait for the first record of a batch.
    pub wait: Duration,
    /// How long a started batch waits for more records.
    pub linger: Duration,
    /// `standalone`: records a projection may be behind before the ingress holds webhooks
    /// (0: never).
    pub max_lag: u64,
}

impl Batches {
    /// A projector of `group` with these batches.
    pub fn projector_config(&self, group: &str) -> terra_projector::ProjectorConfig {
        let mut config = terra_projector::ProjectorConfig::new(group);
        config.batch_size = self.size;
        config.batch_wait = self.wait;
        config.batch_linger = self.linger;
        config
    }
}

pub fn resolve_batches(config: &Config) -> anyhow::Result<Batches> {
    let section = &config.projector;
    if !(1..=100_000).contains(&section.batch_size) {
        bail!(
            "setting {}: must be between 1 and 100000",
            names::setting("projector.batch_size")
        );
    }
    if !(1..=60_000).contains(&section.batch_wait_ms) {
        bail!(
            "setting {}: must be between 1 and 60000",
            names::setting("projector.batch_wait_ms")
        );
    }
    if section.batch_linger_ms > 10_000 {
        bail!(
            "setting {}: must be between 0 and 10000",
            names::setting("projector.batch_linger_ms")
        );
    }
    Ok(Batches {
        size: section.batch_size,
        wait: Duration::from_millis(section.batch_wait_ms),
        linger: Duration::from_millis(section.batch_linger_ms),
        max_lag: section.max_lag,
    })
}

/// The object projection's settings, checked.
#[derive(Debug, Clone)]
pub struct ObjectSettings {
    pub store: StoreConfig,
    pub sqs: Option<SqsConfig>,
    pub sink: ObjectSinkConfig,
}

/// Checks the object store's settings. `sql.supabase` presets Supabase Storage's bucket
/// with path-style requests.
pub fn resolve_objects(config: &Config) -> anyhow::Result<ObjectSettings> {
    let section = &config.objects;
    let supabase = config.sql.supabase;
    let url = section.url.clone().unwrap_or_else(|| {
        if supabase {
            format!("s3://{}", terra_sink_objects::SUPABASE_BUCKET)
        } else {
            format!("file://{}", config.data_dir.join("objects").display())
        }
    });
    let store = StoreConfig {
        url,
        prefix: section.prefix.clone(),
        s3_path_style: section.s3_path_style.unwrap_or(supabase),
        s3_region: Some(section.s3_region.clone()),
        s3_endpoint: section.s3_endpoint.clone(),
        allow_http: section.s3_allow_http,
        options: Vec::new(),
    };
    if let Some(endpoint) = &store.s3_endpoint
        && endpoint.starts_with("http://")
        && !store.allow_http
    {
        bail!(
            "setting {}: {endpoint} is plain HTTP; set {} for a local server",
            names::setting("objects.s3_endpoint"),
            names::setting("objects.s3_allow_http")
        );
    }
    // validate now, so the error names the setting (nothing connects yet)
    terra_sink_objects::Store::open(&store)
        .map_err(|e| anyhow::anyhow!("setting {}: {e}", names::setting("objects.url")))?;
    let sqs = section.sqs_queue_url.clone().map(|queue_url| SqsConfig {
        queue_url,
        endpoint: section.sqs_endpoint.clone(),
        region: store.s3_region.clone(),
    });
    let expiry = section.presign_expiry_secs;
    if !(1..=7 * 24 * 3600).contains(&expiry) {
        bail!(
            "setting {}: must be between 1 and 604800 (7 days, S3's limit)",
            names::setting("objects.presign_expiry_secs")
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
