//! The log positions stored with the rows (partition → next offset to read), written in the
//! same transaction as the rows they cover, so rows and positions always agree.
//!
//! Writers take turns on one row of the positions table, the writer lock (partition
//! [`WRITER_LOCK_PARTITION`], never a log partition): every write transaction upserts it
//! first, which locks it whether it is inserted or already there. Locking the stored
//! positions alone (`SELECT … FOR UPDATE`) locks nothing while the table is empty, so two
//! writers starting from no positions both took the first batch as fresh and wrote it twice
//! (Terra's payload tables have no unique key to stop the second copy).

use std::collections::{BTreeMap, HashSet};

use sqlx::{Any, Executor, Row, Transaction};

use crate::SqlError;
use crate::SqlTarget;
use crate::tables::{INGEST_POSITIONS, INGEST_POSITIONS_COLUMNS};
use crate::{Dialect, Val, insert_rows};

/// A transaction on a target's `Any` pool.
pub type Tx = Transaction<'static, Any>;

/// The `log_partition` of the writer lock's row in the positions table: not a log partition,
/// so never read as a position.
pub const WRITER_LOCK_PARTITION: i64 = -1;

/// The stored positions, read inside `tx`; with `lock`, the writer lock is taken first and
/// held with the rows until the transaction ends, so one batch writes at a time and each
/// reads the positions the one before it committed.
pub async fn read(
    target: &SqlTarget,
    tx: &mut Tx,
    lock: bool,
) -> Result<BTreeMap<u32, u64>, SqlError> {
    read_in(target, tx, INGEST_POSITIONS, lock).await
}

/// [`read`] from the positions table `base` (each projection that keeps positions has its
/// own table of this shape: `ingest_positions`, `webhook_positions`).
pub async fn read_in(
    target: &SqlTarget,
    tx: &mut Tx,
    base: &str,
    lock: bool,
) -> Result<BTreeMap<u32, u64>, SqlError> {
    let table = target.table(base);
    if lock {
        lock_writer(target, tx, base).await?;
    }
    let lock_clause = if lock {
        target.dialect().for_update()
    } else {
        ""
    };
    let rows = tx
        .fetch_all(
            format!(
                "SELECT log_partition, next_offset FROM {table} WHERE log_partition >= 0{lock_clause}"
            )
            .as_str(),
        )
        .await?;
    let mut positions = BTreeMap::new();
    for row in rows {
        let partition: i64 = row.try_get(0)?;
        let next: i64 = row.try_get(1)?;
        positions.insert(partition as u32, next.max(0) as u64);
    }
    Ok(positions)
}

/// Takes the writer lock: upserts its row with a no-op update, which locks it (Postgres, MySQL)
/// whether this inserts it or it was there. A second writer waits here until the first
/// commits or rolls back, then reads the positions it left (each statement of a READ
/// COMMITTED transaction sees what committed before it); a second writer inserting the row at
/// the same time waits on the first's uncommitted row the same way. On SQLite the write
/// takes the database's write lock now, not at the first row written.
async fn lock_writer(target: &SqlTarget, tx: &mut Tx, base: &str) -> Result<(), SqlError> {
    let [partition, next_offset, updated_at] = INGEST_POSITIONS_COLUMNS;
    let upsert = target
        .dialect()
        .on_conflict_update(&[partition], &[next_offset]);
    tx.execute(
        format!(
            "INSERT INTO {} ({partition}, {next_offset}, {updated_at}) VALUES ({WRITER_LOCK_PARTITION}, 0, 0){upsert}",
            target.table(base)
        )
        .as_str(),
    )
    .await?;
    Ok(())
}

/// The stored positions, outside any write (one statement; through the native pool of a
/// [`SqlTarget::reader`]). Everything before them is visible.
pub async fn stored(target: &SqlTarget) -> Result<BTreeMap<u32, u64>, SqlError> {
    stored_in(target, INGEST_POSITIONS).await
}

/// [`stored`] from the positions table `base`.
pub async fn stored_in(target: &SqlTarget, base: &str) -> Result<BTreeMap<u32, u64>, SqlError> {
    let stmt = target.statement(format!(
        "SELECT log_partition, next_offset FROM {} WHERE log_partition >= 0 ORDER BY log_partition",
        target.table(base)
    ));
    Ok(crate::read::fetch(target, &stmt)
        .await?
        .iter()
        .map(|row| {
            let int = |i: usize| row.get(i).and_then(crate::read::Value::as_i64).unwrap_or(0);
            (int(0) as u32, int(1).max(0) as u64)
        })
        .collect())
}

/// Writes the next offset after `last` (partition → last offset written) into the positions
/// table `base`, inside the transaction that wrote the rows; a position never moves back.
pub async fn write(
    target: &SqlTarget,
    tx: &mut Tx,
    base: &str,
    last: &BTreeMap<u32, u64>,
    now_ms: i64,
) -> Result<(), SqlError> {
    let rows: Vec<Vec<Val>> = last
        .iter()
        .map(|(&p, &offset)| {
            vec![
                Val::from(i64::from(p)),
                Val::from(offset as i64 + 1),
                Val::from(now_ms),
            ]
        })
        .collect();
    let [partition, next_offset, updated_at] = INGEST_POSITIONS_COLUMNS;
    let suffix = target
        .dialect()
        .on_conflict_max("t", partition, next_offset, updated_at);
    let table = match target.dialect() {
        Dialect::Postgres => format!("{} AS t", target.table(base)),
        _ => target.table(base),
    };
    for stmt in insert_rows(
        target.dialect(),
        &table,
        &INGEST_POSITIONS_COLUMNS,
        &[],
        rows,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    Ok(())
}

/// Where a batch's record stands against the stored positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// At or before them: already written (a replay), skip it.
    Replay,
    /// Next to write.
    Next,
    /// A partition's first record of the batch is past them: they are before the batch, read
    /// again from them.
    Gap,
}

/// Places a batch's records, in log order, against the stored positions (`check_start`:
/// whether a partition's first record must continue from them; a later chunk of a batch
/// already checked need not).
pub struct Resume<'a> {
    stored: &'a BTreeMap<u32, u64>,
    started: HashSet<u32>,
    check_start: bool,
}

impl<'a> Resume<'a> {
    pub fn new(stored: &'a BTreeMap<u32, u64>, check_start: bool) -> Self {
        Self {
            stored,
            started: HashSet::new(),
            check_start,
        }
    }

    pub fn place(&mut self, partition: u32, offset: u64) -> Place {
        let next = self.stored.get(&partition).copied().unwrap_or(0);
        if offset < next {
            Place::Replay
        } else if self.check_start && self.started.insert(partition) && offset > next {
            Place::Gap
        } else {
            Place::Next
        }
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    #[test]
    fn replays_are_skipped_and_a_gap_is_found_only_at_a_partitions_start() {
        let stored = BTreeMap::from([(0, 10), (1, 5)]);
        let mut r = Resume::new(&stored, true);
        assert_eq!(r.place(0, 9), Place::Replay);
        assert_eq!(r.place(0, 10), Place::Next);
        assert_eq!(r.place(0, 12), Place::Next, "past its start, not a gap");
        assert_eq!(r.place(1, 7), Place::Gap);
        assert_eq!(
            r.place(2, 0),
            Place::Next,
            "a partition never stored starts at 0"
        );
        let mut later_chunk = Resume::new(&stored, false);
        assert_eq!(later_chunk.place(1, 7), Place::Next);
    }
}
