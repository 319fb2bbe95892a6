//! Test support: a fresh database per test on the machine's real Postgres and MariaDB (or a
//! SQLite file), an embedded log fed with fixture envelopes, and table snapshots.

#![allow(dead_code, unreachable_pub, unused_macros)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use sqlx::{Executor, Row};
use terra_core::envelope::Envelope;
use terra_eventlog::{EventLog, Position, Record};
use terra_projector::sql::{Dialect, SqlConfig, SqlTarget, Variant};
use terra_projector::{ProjectorConfig, ProjectorMetrics, SqlSink, WriteStats};
use tokio::sync::watch;

/// Runs each named `async fn(Dialect)` as a test on Postgres, MySQL and SQLite.
macro_rules! on_every_dialect {
    ($($name:ident),* $(,)?) => {
        mod postgres { $( #[tokio::test] async fn $name() { super::$name(super::Dialect::Postgres).await } )* }
        mod mysql { $( #[tokio::test] async fn $name() { super::$name(super::Dialect::MySql).await } )* }
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name(super::Dialect::Sqlite).await } )* }
    };
}

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const MYSQL_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pub dialect: Dialect,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(dialect: Dialect) -> Self {
        sqlx::any::install_default_drivers();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        match dialect {
            Dialect::Postgres => {
                let admin = sqlx::AnyPool::connect(PG_ADMIN)
                    .await
                    .expect("Postgres on 127.0.0.1:5432");
                admin
                    .execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .unwrap();
                admin.close().await;
                Self {
                    url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
                    dialect,
                    name,
                    _dir: None,
                }
            }
            Dialect::MySql => {
                let admin = sqlx::AnyPool::connect(MYSQL_ADMIN)
                    .await
                    .expect("MariaDB on 127.0.0.1:3306");
                admin
                    .execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .unwrap();
                admin.close().await;
                Self {
                    url: format!("mysql://root@127.0.0.1:3306/{name}"),
                    dialect,
                    name,
                    _dir: None,
                }
            }
            Dialect::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("terra.db").display());
                Self {
                    url,
                    dialect,
                    name,
                    _dir: Some(dir),
                }
            }
        }
    }

    pub fn config(&self) -> SqlConfig {
        SqlConfig::new(&self.url)
    }

    pub async fn target(&self) -> SqlTarget {
        self.target_with(Variant::Terra).await
    }

    pub async fn target_with(&self, variant: Variant) -> SqlTarget {
        let mut config = self.config();
        config.variant = variant;
        let target = SqlTarget::connect(&config).unwrap();
        terra_projector::sql::migrate(&target).await.unwrap();
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

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/webhooks")
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(format!("{name}.json"))).unwrap()
}

/// Every fixture, by name, sorted.
pub fn all_fixtures() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A log record as the ingress writes it.
pub fn record(
    body: &[u8],
    ordering_ms: Option<i64>,
    received_s: i64,
    trace_id: Option<&str>,
) -> Record {
    let classification = terra_core::classify(body).ok();
    let user_id = classification.as_ref().and_then(|c| c.user_id.clone());
    let envelope = Envelope {
        envelope_id: uuid::Uuid::now_v7().to_string(),
        received_at: Some(prost_types::Timestamp {
            seconds: received_s,
            nanos: 0,
        }),
        source: "default".into(),
        event_type: classification
            .as_ref()
            .map(|c| c.event_type.clone())
            .unwrap_or_default(),
        user_id: user_id.clone(),
        ordering_timestamp_ms: ordering_ms,
        terra_trace_id: trace_id.map(str::to_owned),
        body_is_json: classification.is_some(),
        body: body.to_vec().into(),
        ..Default::default()
    };
    Record {
        key: user_id.map(|u| bytes::Bytes::from(u.into_bytes())),
        headers: vec![],
        value: envelope.encode_to_vec().into(),
    }
}

pub struct TestLog {
    pub log: EventLog,
    _dir: tempfile::TempDir,
}

impl TestLog {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::Embedded(
            terra_eventlog::embedded::EmbeddedLog::open(&dir.path().join("log"), 3).unwrap(),
        );
        Self { log, _dir: dir }
    }

    pub async fn append(&self, records: Vec<Record>) -> Vec<Position> {
        self.log.append(records).await.unwrap()
    }
}

/// Projects the log to its end into `target` as consumer group `group`.
pub async fn project(
    log: &EventLog,
    target: &SqlTarget,
    group: &str,
    batch_size: usize,
) -> WriteStats {
    let mut config = ProjectorConfig::new(group);
    config.batch_size = batch_size;
    config.batch_wait = Duration::from_millis(20);
    config.stop_at_end = true;
    let mut sink = SqlSink::new(target.clone());
    let (_tx, rx) = watch::channel(false);
    terra_projector::run(
        &config,
        log,
        &mut sink,
        &ProjectorMetrics::unregistered(),
        rx,
        |_| {},
    )
    .await
    .unwrap()
}

/// Rows of a query, every column as optional text, in the query's order.
pub async fn rows(target: &SqlTarget, sql: &str) -> Vec<Vec<Option<String>>> {
    terra_projector::sql::rows(target, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub async fn count(target: &SqlTarget, base: &str) -> i64 {
    let row = target
        .pool()
        .fetch_one(format!("SELECT COUNT(*) FROM {}", target.table(base)).as_str())
        .await
        .unwrap();
    row.try_get(0).unwrap()
}

/// Everything the projection holds that does not depend on wall-clock time of the write.
pub async fn snapshot(target: &SqlTarget) -> terra_projector::sql::Snapshot {
    terra_projector::sql::snapshot(target).await.unwrap()
}
