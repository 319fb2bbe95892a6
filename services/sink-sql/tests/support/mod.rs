//! Test support: the test kit's fresh database per test on the machine's real Postgres and
//! MariaDB (or a SQLite file) and embedded log fed with fixture records; the SQL projector run
//! to the end, and table snapshots.

#![allow(dead_code, unreachable_pub, unused_macros, unused_imports)]

use std::time::Duration;

use sqlx::{Executor, Row};
use terra_eventlog::EventLog;
use terra_projector::CancellationToken;
use terra_projector::{ProjectorConfig, ProjectorMetrics, WriteStats};
pub use terra_schema::Dialect;
use terra_schema::SqlTarget;
use terra_sink_sql::SqlSink;

/// Runs each named `async fn(Dialect)` as a test on Postgres, MySQL and SQLite.
macro_rules! on_every_dialect {
    ($($name:ident),* $(,)?) => {
        mod postgres { $( #[tokio::test] async fn $name() { super::$name(super::Dialect::Postgres).await } )* }
        mod mysql { $( #[tokio::test] async fn $name() { super::$name(super::Dialect::MySql).await } )* }
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name(super::Dialect::Sqlite).await } )* }
    };
}

pub use terra_testkit::{
    MYSQL_ADMIN, PG_ADMIN, TestDb, TestLog, all_fixtures, fixture, fixtures_dir, record,
};

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
    let rx = CancellationToken::new();
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
    terra_schema::rows(target, sql)
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
pub async fn snapshot(target: &SqlTarget) -> terra_schema::Snapshot {
    terra_schema::snapshot(target).await.unwrap()
}
