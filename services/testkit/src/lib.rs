//! Test helpers shared by every crate's tests (a dev-dependency, never a dependency of the
//! product): Terra's fixture bodies, log records built the way the ingress builds them (by
//! `terra_core::envelope::Envelope::of_delivery`), a fresh database per test on the machine's
//! Postgres and MariaDB (or a SQLite file), an embedded log in a temporary folder, and a
//! private Postgres server a test may stop and start ([`PrivatePostgres`]), and pre-signed
//! S3 URLs checked as S3 checks them ([`presigned`]), Azurite's containers and a private
//! Azurite ([`azurite`]), the GCS emulator's buckets and seeded objects ([`gcs`]).

pub mod azurite;
pub mod gcs;
pub mod presigned;
mod private_postgres;

use std::path::{Path, PathBuf};

use sqlx::Executor;
use terra_core::envelope::{Delivery, Envelope};
use terra_eventlog::{EventLog, Position, Record};
use terra_schema::{Dialect, SqlConfig, SqlTarget, Variant};

pub use private_postgres::PrivatePostgres;

/// A Unix time (seconds) in 2026 that tests use as "the time the webhooks were received".
pub const T0: i64 = 1_780_000_000;
/// The user of most fixtures.
pub const FIXTURE_USER: &str = "0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3";
pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const MYSQL_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

/// `tests/fixtures/webhooks` of the repository.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/webhooks")
}

/// The exact bytes of fixture `name` (`tests/fixtures/webhooks/<name>.json`).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every fixture, by name, sorted by name.
pub fn all_fixtures() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/webhooks")
        .map(|e| e.expect("a fixture").path())
        .map(|p| {
            (
                p.file_stem()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned(),
                std::fs::read(&p).expect("a readable fixture"),
            )
        })
        .collect();
    out.sort();
    out
}

/// The envelope the ingress would build for `body`: received at `received_s` (Unix
/// seconds), with the ordering timestamp and Terra trace id given.
pub fn envelope(
    body: &[u8],
    ordering_ms: Option<i64>,
    received_s: i64,
    trace_id: Option<&str>,
) -> Envelope {
    let delivery = Delivery {
        received_at_ms: Some(received_s * 1000),
        source: "default".to_owned(),
        signature_timestamp: received_s,
        ordering_timestamp_ms: ordering_ms,
        terra_trace_id: trace_id.map(str::to_owned),
        ..Delivery::default()
    };
    Envelope::of_delivery(delivery, bytes::Bytes::copy_from_slice(body))
}

/// The log record the ingress would append for `body` (see [`envelope`]).
pub fn record(
    body: &[u8],
    ordering_ms: Option<i64>,
    received_s: i64,
    trace_id: Option<&str>,
) -> Record {
    Record::of_envelope(&envelope(body, ordering_ms, received_s, trace_id), [])
}

/// A database that exists for one test: a fresh database on the machine's Postgres or
/// MariaDB (dropped by [`TestDb::drop_now`]), or a SQLite file in a temporary folder.
pub struct TestDb {
    pub url: String,
    pub dialect: Dialect,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(dialect: Dialect) -> Self {
        Self::create(dialect, "").await
    }

    /// A fresh MariaDB database created with `options` after its name, as an existing
    /// server's may be (`CHARACTER SET latin1`).
    pub async fn mysql_with(options: &str) -> Self {
        Self::create(Dialect::MySql, options).await
    }

    async fn create(dialect: Dialect, options: &str) -> Self {
        sqlx::any::install_default_drivers();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let (admin, url) = match dialect {
            Dialect::Postgres => (
                PG_ADMIN,
                format!("postgres://postgres@127.0.0.1:5432/{name}"),
            ),
            Dialect::MySql => (MYSQL_ADMIN, format!("mysql://root@127.0.0.1:3306/{name}")),
            Dialect::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                let url = format!("sqlite://{}", dir.path().join("terra.db").display());
                return Self {
                    url,
                    dialect,
                    name,
                    _dir: Some(dir),
                };
            }
        };
        let pool = sqlx::AnyPool::connect(admin)
            .await
            .unwrap_or_else(|e| panic!("{dialect:?} on the machine ({admin}): {e}"));
        pool.execute(format!("CREATE DATABASE {name} {options}").as_str())
            .await
            .expect("CREATE DATABASE");
        pool.close().await;
        Self {
            url,
            dialect,
            name,
            _dir: None,
        }
    }

    /// The database's name (Postgres and MySQL).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> SqlConfig {
        SqlConfig::new(&self.url)
    }

    /// Connected, with the tables migrated.
    pub async fn target(&self) -> SqlTarget {
        self.target_with(Variant::Terra).await
    }

    pub async fn target_with(&self, variant: Variant) -> SqlTarget {
        let mut config = self.config();
        config.variant = variant;
        let target = SqlTarget::connect(&config).expect("a valid SQL config");
        terra_schema::migrate(&target).await.expect("migrations");
        target
    }

    pub async fn drop_now(self) {
        let admin = match self.dialect {
            Dialect::Postgres => PG_ADMIN,
            Dialect::MySql => MYSQL_ADMIN,
            Dialect::Sqlite => return,
        };
        if let Ok(pool) = sqlx::AnyPool::connect(admin).await {
            let force = if self.dialect == Dialect::Postgres {
                " WITH (FORCE)"
            } else {
                ""
            };
            let _ = pool
                .execute(format!("DROP DATABASE IF EXISTS {}{force}", self.name).as_str())
                .await;
            pool.close().await;
        }
    }
}

/// An embedded log of three partitions in a temporary folder.
pub struct TestLog {
    pub log: EventLog,
    pub dir: tempfile::TempDir,
}

impl TestLog {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let log = EventLog::Embedded(
            terra_eventlog::embedded::EmbeddedLog::open(&dir.path().join("log"), 3)
                .expect("an embedded log"),
        );
        Self { log, dir }
    }

    pub async fn append(&self, records: Vec<Record>) -> Vec<Position> {
        self.log.append(records).await.expect("append")
    }
}

impl Default for TestLog {
    fn default() -> Self {
        Self::new()
    }
}

/// An activity webhook body of about `bytes`: one record with enough heart-rate samples,
/// in Terra's `", "` / `": "` spelling.
pub fn large_activity(bytes: usize) -> Vec<u8> {
    let mut body = String::from(
        r#"{"type": "activity", "user": {"user_id": "8b2c7e4e-1c0a-4c55-9a55-0c1d1e6f2a10", "provider": "GARMIN", "reference_id": null, "scopes": null, "last_webhook_update": null, "created_at": null, "active": true}, "version": "2022-03-16", "data": [{"metadata": {"summary_id": "big-1", "start_time": "2026-10-04T07:15:00.000000+02:00", "end_time": "2026-10-04T09:15:00.000000+02:00", "type": 1}, "heart_rate_data": {"detailed": {"hr_samples": ["#,
    );
    let mut i = 0u64;
    while body.len() < bytes {
        if i > 0 {
            body.push_str(", ");
        }
        body.push_str(&format!(
            r#"{{"timestamp": "2026-10-04T07:{:02}:{:02}.{:06}+02:00", "bpm": {}}}"#,
            (i / 60) % 60,
            i % 60,
            i % 1_000_000,
            60 + i % 90
        ));
        i += 1;
    }
    body.push_str("]}}}]}");
    body.into_bytes()
}
