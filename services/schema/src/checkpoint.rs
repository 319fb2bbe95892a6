//! SQLite's WAL checkpoints off the writer's path.
//!
//! In WAL mode the connection whose commit finds the WAL past `wal_autocheckpoint` pages
//! copies the WAL into the database file (and syncs it) inside that commit. With the writer's
//! 16,384 pages (see [`crate::SqlTarget::connect`]) that is up to 64 MB copied while the one
//! writer waits: in `terra-bench webhooks` on SQLite, appends that met such a commit waited
//! 100-200 ms for their webhook (p99 99-199 ms; with 1,000 pages, 37-61 ms, for more
//! checkpoints on the writer's path). So a task with a connection of its own runs a
//! `PASSIVE` checkpoint every [`INTERVAL`]: it copies what is committed beside the writer
//! (a passive checkpoint never blocks a writer or a reader), and the writer's own checkpoint,
//! kept as a backstop, finds little or nothing left to copy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions, Connection, Executor};

/// How often the WAL is checkpointed in the background.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// Held by every clone of a SQLite [`crate::SqlTarget`]: the task ends once the last clone
/// is dropped or the target is closed.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    closed: AtomicBool,
}

impl Checkpointer {
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// Starts the checkpoints of the database `options` opens, on the current runtime (none
/// outside one).
pub(crate) fn start(options: AnyConnectOptions) -> Option<Arc<Checkpointer>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let checkpointer = Arc::new(Checkpointer {
        closed: AtomicBool::new(false),
    });
    let weak = Arc::downgrade(&checkpointer);
    runtime.spawn(async move {
        let mut conn: Option<AnyConnection> = None;
        loop {
            tokio::time::sleep(INTERVAL).await;
            match weak.upgrade() {
                Some(c) if !c.closed.load(Ordering::Relaxed) => {}
                _ => break,
            }
            if conn.is_none() {
                // the writer's pool connects lazily: until it has, there is nothing to copy
                conn = options.connect().await.ok();
            }
            if let Some(c) = conn.as_mut()
                && c.execute("PRAGMA wal_checkpoint(PASSIVE)").await.is_err()
            {
                // the file went away or is locked for good: connect again next time
                conn = None;
            }
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    });
    Some(checkpointer)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::{SqlConfig, SqlTarget};

    fn size(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// What is committed reaches the database file while the writer goes on, well before the
    /// writer's own checkpoint (16,384 pages, 64 MB) would copy it; closing the target ends
    /// the task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_pages_reach_the_database_file_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let target =
            SqlTarget::connect(&SqlConfig::new(format!("sqlite://{}", path.display()))).unwrap();
        let pool = target.pool();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL)")
            .execute(pool)
            .await
            .unwrap();
        // 4 MB in 64 commits: 1,000 pages, far below the writer's checkpoint
        for _ in 0..64 {
            let mut tx = pool.begin().await.unwrap();
            for _ in 0..16 {
                sqlx::query("INSERT INTO t (b) VALUES (?)")
                    .bind(vec![7u8; 4_096])
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while size(&path) < 4 << 20 {
            assert!(
                Instant::now() < deadline,
                "the database file is {} bytes after 10 s, the WAL {}",
                size(&path),
                size(&dir.path().join("t.db-wal"))
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let checkpointer = target.checkpointer.clone().expect("a checkpointer");
        target.close().await;
        assert!(checkpointer.closed.load(super::Ordering::Relaxed));
    }
}
