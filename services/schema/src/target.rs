//! The connection target: where the tables are (URL, Postgres schema, table prefix, Terra's
//! variant) and the pools that reach them, for the SQL sink's writes and the query service's
//! reads alike.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::{Dialect, SqlError, Stmt, Variant, redact, sqlite_file};

/// Postgres schema Terra's destination uses today.
pub const DEFAULT_SCHEMA: &str = "terra";

/// Where and how to write. `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct SqlConfig {
    /// `postgres://…`, `mysql://…` or `sqlite://PATH` (`sqlite:PATH` too).
    pub url: String,
    /// Postgres schema (ignored by MySQL, where the URL's database is the namespace, and by
    /// SQLite).
    pub schema: String,
    /// Table name prefix (empty for the live tables).
    pub prefix: String,
    /// Terra's Supabase variant of the tables (Postgres only).
    pub variant: Variant,
    pub max_connections: u32,
}

impl std::fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlConfig")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("prefix", &self.prefix)
            .field("variant", &self.variant)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl SqlConfig {
    /// Checks the settings without connecting: the URL's dialect, the schema and prefix
    /// names, the Supabase variant only on Postgres.
    pub fn validate(&self) -> Result<Dialect, SqlError> {
        let dialect = Dialect::of_url(&self.url)?;
        validate_name("schema", &self.schema)?;
        if !self.prefix.is_empty() {
            validate_name("table prefix", &self.prefix)?;
        }
        if self.variant == Variant::Supabase && dialect != Dialect::Postgres {
            return Err(SqlError::Config(
                "the Supabase tables need a Postgres URL (Supabase is Postgres)".into(),
            ));
        }
        Ok(dialect)
    }

    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            prefix: String::new(),
            variant: Variant::Terra,
            max_connections: 4,
        }
    }
}

/// A connected database with the names of one projection's tables.
#[derive(Clone)]
pub struct SqlTarget {
    pub(crate) pool: AnyPool,
    /// Postgres only: how to open a native pool for reads (see [`SqlTarget::reader`]).
    pg_options: Option<std::sync::Arc<(sqlx::postgres::PgConnectOptions, u32)>>,
    /// The native pool reads go through once [`SqlTarget::reader`] made one.
    pub(crate) pg_reads: Option<sqlx::PgPool>,
    pub(crate) dialect: Dialect,
    pub(crate) schema: String,
    pub(crate) prefix: String,
    pub(crate) variant: Variant,
    /// SQLite: the WAL checkpoints in the background (see [`crate::checkpoint`]).
    pub(crate) checkpointer: Option<std::sync::Arc<crate::checkpoint::Checkpointer>>,
}

impl std::fmt::Debug for SqlTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the URL: it may hold a password
        f.debug_struct("SqlTarget")
            .field("dialect", &self.dialect)
            .field("schema", &self.schema)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl SqlTarget {
    /// Connects (lazily: the first use opens connections, so a database that is down at
    /// start-up is an outage to wait out, not a crash) after validating the settings.
    pub fn connect(config: &SqlConfig) -> Result<Self, SqlError> {
        sqlx::any::install_default_drivers();
        let dialect = config.validate()?;
        let url = match dialect {
            // create the file when missing
            Dialect::Sqlite if !config.url.contains('?') => format!("{}?mode=rwc", config.url),
            _ => config.url.clone(),
        };
        if dialect == Dialect::Sqlite {
            sqlite_file::make_private(&url)?;
        }
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| {
                SqlError::Config(format!("invalid database URL: {}", redact(&e.to_string())))
            })?
            .disable_statement_logging();
        let max = match dialect {
            // one writer at a time on SQLite; more connections only contend for the lock
            Dialect::Sqlite => 1,
            _ => config.max_connections.max(1),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            // an unreachable database is reported (and backed off from) within seconds
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    match dialect {
                        Dialect::Sqlite => {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            // the one writer's page cache: with SQLite's 2 MB default a
                            // batch spills dirty pages before its commit and reads index
                            // pages back through the kernel
                            conn.execute("PRAGMA cache_size = -65536").await?;
                            // a checkpoint every 16k pages instead of 1k: index pages that
                            // every batch touches are copied to the database once, not
                            // after every few batches (the WAL grows to ~64 MB before it
                            // is reset)
                            conn.execute("PRAGMA wal_autocheckpoint = 16384").await?;
                            // statement journals in memory: every multi-row INSERT … ON
                            // CONFLICT of a batch journals the pages it changes so that the
                            // statement alone can be undone; in a temporary file that was
                            // a tenth of the projector's CPU in pwrite calls (issue 16's
                            // profile). It holds one statement's pages, then is dropped.
                            conn.execute("PRAGMA temp_store = MEMORY").await?;
                        }
                        Dialect::MySql => {
                            conn.execute("SET SESSION sql_mode = 'STRICT_TRANS_TABLES,ANSI_QUOTES,NO_ENGINE_SUBSTITUTION'").await?;
                            conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                        }
                        Dialect::Postgres => {}
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options.clone());
        let checkpointer = match dialect {
            Dialect::Sqlite if !url.contains("mode=memory") && !url.contains(":memory:") => {
                crate::checkpoint::start(options)
            }
            _ => None,
        };
        let pg_options = match dialect {
            Dialect::Postgres => Some(std::sync::Arc::new((
                sqlx::postgres::PgConnectOptions::from_str(&url)
                    .map_err(|e| {
                        SqlError::Config(format!(
                            "invalid database URL: {}",
                            redact(&e.to_string())
                        ))
                    })?
                    .disable_statement_logging(),
                max,
            ))),
            _ => None,
        };
        Ok(Self {
            pool,
            pg_options,
            pg_reads: None,
            dialect,
            schema: config.schema.clone(),
            prefix: config.prefix.clone(),
            variant: config.variant,
            checkpointer,
        })
    }

    /// The same target for a read-heavy user (the query service): on Postgres, [`crate::read::fetch`]
    /// and [`SqlTarget::ping`] then go through a native pool of their own (same URL and size,
    /// connecting lazily), which skips the `Any` driver's per-row conversion. Writes still go
    /// through [`SqlTarget::pool`].
    pub fn reader(&self) -> Self {
        let mut reader = self.clone();
        if let Some(pg) = &self.pg_options
            && reader.pg_reads.is_none()
        {
            let (options, max) = &**pg;
            reader.pg_reads = Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(*max)
                    .acquire_timeout(Duration::from_secs(3))
                    // no ping round trip before every query: a connection the server dropped
                    // fails its next query (UNAVAILABLE, retried by the caller) and is replaced
                    .test_before_acquire(false)
                    .connect_lazy_with(options.clone()),
            );
        }
        reader
    }

    /// A target with a pool of its own for a reader beside a writer (the query service in
    /// `standalone`): `config.max_connections` connections, so long reads never hold the
    /// connections the writer needs. On SQLite they are read-only connections (`mode=ro`,
    /// `query_only`), several at once, which WAL lets read while the writer writes (the
    /// writer made the file WAL); elsewhere it is [`SqlTarget::connect`].
    pub fn connect_read_only(config: &SqlConfig) -> Result<Self, SqlError> {
        let mut target = Self::connect(config)?;
        if target.dialect != Dialect::Sqlite {
            return Ok(target);
        }
        // the writer's target checkpoints
        target.checkpointer = None;
        let url = if config.url.contains('?') {
            config.url.clone()
        } else {
            format!("{}?mode=ro", config.url)
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| {
                SqlError::Config(format!("invalid database URL: {}", redact(&e.to_string())))
            })?
            .disable_statement_logging();
        target.pool = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA query_only = ON").await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(target)
    }

    /// One round trip to the database (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), SqlError> {
        match &self.pg_reads {
            Some(pg) => pg.execute("SELECT 1").await.map(|_| ())?,
            None => self.pool.execute("SELECT 1").await.map(|_| ())?,
        }
        Ok(())
    }

    /// A statement for this target's dialect.
    pub fn statement(&self, sql: impl Into<String>) -> Stmt {
        Stmt::new(self.dialect, sql)
    }

    /// The same database with another table prefix.
    pub fn with_prefix(&self, prefix: &str) -> Result<Self, SqlError> {
        if !prefix.is_empty() {
            validate_name("table prefix", prefix)?;
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            ..self.clone()
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Terra's variant of the tables.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The table prefix (empty for the live tables).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The qualified, quoted name of table `base` of this projection.
    pub fn table(&self, base: &str) -> String {
        self.table_with_prefix(&self.prefix, base)
    }

    pub fn table_with_prefix(&self, prefix: &str, base: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("\"{}\".\"{prefix}{base}\"", self.schema),
            Dialect::MySql | Dialect::Sqlite => format!("\"{prefix}{base}\""),
        }
    }

    /// `{schema}` of the migration templates.
    pub(crate) fn schema_qualifier(&self) -> String {
        match self.dialect {
            Dialect::Postgres => format!("\"{}\".", self.schema),
            Dialect::MySql | Dialect::Sqlite => String::new(),
        }
    }

    /// Closes the pools' connections.
    pub async fn close(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.close();
        }
        if let Some(pg) = &self.pg_reads {
            pg.close().await;
        }
        self.pool.close().await;
    }
}

/// Schema names and prefixes go into SQL text, so only plain identifiers pass.
fn validate_name(what: &str, name: &str) -> Result<(), SqlError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(SqlError::Config(format!(
            "{what} {name:?} must be 1-40 characters of a-z 0-9 _ not starting with a digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("bad url postgres://app:s3cret@db:5432/x here"),
            "bad url postgres://app:***@db:5432/x here"
        );
        assert_eq!(redact("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(redact("no url"), "no url");
    }

    #[test]
    fn names_are_plain_identifiers() {
        assert!(validate_name("schema", "terra").is_ok());
        assert!(validate_name("schema", "rb1732_").is_ok());
        for bad in ["", "Terra", "a;drop", "1abc", "a\"b", &"x".repeat(41)] {
            let err = validate_name("schema", bad).unwrap_err().to_string();
            assert!(err.contains("schema"), "{err}");
        }
    }

    #[test]
    fn dialect_from_url() {
        assert_eq!(
            Dialect::of_url("postgres://h/db").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(
            Dialect::of_url("postgresql://h/db").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(Dialect::of_url("mysql://h/db").unwrap(), Dialect::MySql);
        assert_eq!(Dialect::of_url("mariadb://h/db").unwrap(), Dialect::MySql);
        assert_eq!(
            Dialect::of_url("sqlite://data/x.db").unwrap(),
            Dialect::Sqlite
        );
        let err = Dialect::of_url("oracle://u:pw@h/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("oracle") && !err.contains("pw"), "{err}");
    }
}
