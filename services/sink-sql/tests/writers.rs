//! Two SQL projectors writing the same tables at once (two `project sql` processes, or one
//! restarted while the old one still finishes a batch) write each batch once (issue 11 §4):
//! writers take turns on the positions table's writer lock, which exists to be locked even
//! when no position is stored yet. Before it, both took the first batch against empty
//! positions as fresh and Terra's tables without a unique key got every row twice.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use sqlx::Executor;
use support::*;
use terra_schema::{SqlConfig, SqlTarget};

const T0: i64 = 1_780_000_000;

/// Data-request events of one user: their payload rows are in a table without a unique key
/// on Terra's side (`terra_misc_payloads`), so nothing but the positions can stop a copy.
fn healthchecks(n: usize) -> Vec<terra_eventlog::Record> {
    (0..n)
        .map(|i| {
            let body = format!(
                r#"{{"type": "processing", "status": "processing", "message": "request {i}", "user": {{"user_id": "u-writers", "provider": "GARMIN"}}}}"#
            );
            record(body.as_bytes(), Some((T0 + i as i64) * 1000), T0, None)
        })
        .collect()
}

/// Sessions of the test's database waiting for a lock (a table lock, a row lock).
async fn waiting(target: &SqlTarget) -> i64 {
    let sql = match target.dialect() {
        Dialect::Postgres => {
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        }
        // a statement of this test running for a second or more is waiting (MariaDB's
        // INNODB_TRX lists no lock wait on this server, so the process list it is)
        Dialect::MySql => {
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() \
             AND ID <> CONNECTION_ID() AND COMMAND IN ('Query', 'Execute') AND TIME >= 1"
        }
        Dialect::Sqlite => unreachable!("SQLite has no lock waits to list"),
    };
    let found = rows(target, sql).await;
    found[0][0].as_deref().unwrap_or("0").parse().unwrap()
}

/// Two writers (each with its own pool, as two processes) start from no stored positions
/// and project the same log at once. On Postgres and MariaDB a third session holds back
/// writes to `terra_misc_payloads` until both writers are waiting, so the two batches
/// overlap for certain; SQLite's own write lock serialises them (checked all the same; the
/// two may not overlap there).
async fn the_first_batch_is_written_once_by_two_overlapping_writers(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = db.target().await;
    let log = TestLog::new();
    let n = 3;
    log.append(healthchecks(n)).await;

    let mut holder = target.pool().acquire().await.unwrap();
    let misc = target.table("terra_misc_payloads");
    match dialect {
        Dialect::Postgres => {
            holder.execute("BEGIN").await.unwrap();
            holder
                .execute(format!("LOCK TABLE {misc} IN SHARE MODE").as_str())
                .await
                .unwrap();
        }
        Dialect::MySql => {
            holder
                .execute(format!("LOCK TABLES {misc} READ").as_str())
                .await
                .unwrap();
        }
        Dialect::Sqlite => {}
    }

    let writers: Vec<_> = ["sql", "sql-second-process"]
        .into_iter()
        .map(|group| {
            let writer = SqlTarget::connect(&SqlConfig::new(&db.url)).unwrap();
            let log = log.log.clone();
            tokio::spawn(async move {
                let stats = project(&log, &writer, group, 10).await;
                writer.close().await;
                stats
            })
        })
        .collect();

    if dialect != Dialect::Sqlite {
        let deadline = Instant::now() + Duration::from_secs(20);
        while waiting(&target).await < 2 {
            assert!(
                Instant::now() < deadline,
                "the two writers did not both wait ({} waiting)",
                waiting(&target).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let release = match dialect {
            Dialect::Postgres => "COMMIT",
            _ => "UNLOCK TABLES",
        };
        holder.execute(release).await.unwrap();
    }
    drop(holder);

    let mut written = 0;
    let mut replayed = 0;
    for writer in writers {
        let stats = tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("both writers finish")
            .unwrap();
        written += stats.records;
        replayed += stats.replayed;
    }
    assert_eq!(written, n, "the batch was written once");
    if dialect != Dialect::Sqlite {
        // the writers overlapped: the second found the batch written (on SQLite the second
        // may start after the first ended, and then seeks past it without a replay)
        assert_eq!(replayed, n, "the second writer found the batch written");
    }
    assert_eq!(count(&target, "terra_misc_payloads").await, n as i64);
    assert_eq!(count(&target, "ingest_payloads").await, n as i64);
    let positions = terra_schema::positions::stored(&target).await.unwrap();
    assert_eq!(positions.values().sum::<u64>(), n as u64, "{positions:?}");
    target.close().await;
    db.drop_now().await;
}

on_every_dialect!(the_first_batch_is_written_once_by_two_overlapping_writers);
