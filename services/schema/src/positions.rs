//! The log positions stored with the rows (partition → next offset to read), written in the
//! same transaction as the rows they cover, so rows and positions always agree.

use std::collections::BTreeMap;

use sqlx::{Any, Executor, Row, Transaction};

use crate::tables::INGEST_POSITIONS;
use crate::{Dialect, SqlError, SqlTarget};

/// A transaction on a target's `Any` pool.
pub type Tx = Transaction<'static, Any>;

/// The stored positions, read inside `tx`; with `lock`, the rows stay locked until the
/// transaction ends (writers take them first, so one batch writes at a time).
pub async fn read(
    target: &SqlTarget,
    tx: &mut Tx,
    lock: bool,
) -> Result<BTreeMap<u32, u64>, SqlError> {
    let table = target.table(INGEST_POSITIONS);
    if target.dialect() == Dialect::Sqlite && lock {
        // a write takes SQLite's write lock now, not at the first row written
        tx.execute(
            format!("UPDATE {table} SET next_offset = next_offset WHERE log_partition = -1")
                .as_str(),
        )
        .await?;
    }
    let lock_clause = if lock {
        target.dialect().for_update()
    } else {
        ""
    };
    let rows = tx
        .fetch_all(format!("SELECT log_partition, next_offset FROM {table}{lock_clause}").as_str())
        .await?;
    let mut positions = BTreeMap::new();
    for row in rows {
        let partition: i64 = row.try_get(0)?;
        let next: i64 = row.try_get(1)?;
        positions.insert(partition as u32, next.max(0) as u64);
    }
    Ok(positions)
}

/// The stored positions, outside any write (one statement; through the native pool of a
/// [`SqlTarget::reader`]). Everything before them is visible.
pub async fn stored(target: &SqlTarget) -> Result<BTreeMap<u32, u64>, SqlError> {
    let stmt = target.statement(format!(
        "SELECT log_partition, next_offset FROM {} ORDER BY log_partition",
        target.table(INGEST_POSITIONS)
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
