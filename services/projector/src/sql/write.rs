//! One batch, one transaction: the consumed positions are read (and locked) first and written
//! last, so the rows and the positions always agree (exactly-once effect). Records at or
//! before the stored positions are replays and skipped; a batch that starts after them (a
//! gap, e.g. after a rebuild swapped older tables in) is refused with the stored positions so
//! the runner can go back and fill it.
//!
//! Payload rows are written set-wise (a few statements per batch, whatever its size): the
//! payload index is read for the batch's identities, the last writer by version wins, the
//! superseded rows are deleted and the winners inserted.

use std::collections::{BTreeMap, HashSet};

use sqlx::{Any, Executor, Row, Transaction};

use super::dialect::{Val, insert_rows};
use super::payloads::write_payloads;
use super::users::{write_lifecycle, write_seen_users};
use super::{Dialect, SqlError, SqlTarget, Variant};
use crate::plan::{EventPlan, Plan, Planned};
use crate::{SinkError, WriteStats};

pub(crate) type Tx = Transaction<'static, Any>;

/// The stored positions (partition → next offset to read).
pub(crate) async fn read_positions(
    target: &SqlTarget,
    tx: &mut Tx,
    lock: bool,
) -> Result<BTreeMap<u32, u64>, SqlError> {
    let table = target.table("ingest_positions");
    if target.dialect == Dialect::Sqlite && lock {
        // a write takes SQLite's write lock now, not at the first row written
        tx.execute(
            format!("UPDATE {table} SET next_offset = next_offset WHERE log_partition = -1")
                .as_str(),
        )
        .await?;
    }
    let lock_clause = if lock {
        target.dialect.for_update()
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

/// Writes `batch` in one transaction.
pub(crate) async fn write_batch(
    target: &SqlTarget,
    batch: &[Planned],
) -> Result<WriteStats, SinkError> {
    let mut tx = target.pool.begin().await.map_err(SqlError::from)?;
    let positions = read_positions(target, &mut tx, true).await?;
    let mut stats = WriteStats::default();
    let mut fresh: Vec<&Planned> = Vec::with_capacity(batch.len());
    let mut started: HashSet<u32> = HashSet::new();
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for planned in batch {
        let partition = planned.position.partition;
        let next = positions.get(&partition).copied().unwrap_or(0);
        if planned.position.offset < next {
            stats.replayed += 1;
            continue;
        }
        if started.insert(partition) && planned.position.offset > next {
            return Err(SinkError::Behind(positions));
        }
        last.insert(partition, planned.position.offset);
        fresh.push(planned);
    }
    if fresh.is_empty() {
        tx.rollback().await.map_err(SqlError::from)?;
        return Ok(stats);
    }

    let now = crate::now_ms();
    write_dead_letters(target, &mut tx, &fresh, now, &mut stats).await?;
    let events: Vec<(&Planned, &EventPlan)> = fresh
        .iter()
        .filter_map(|p| match &p.plan {
            Plan::Event(e) => Some((*p, e)),
            Plan::Dead(_) => None,
        })
        .collect();
    write_seen_users(target, &mut tx, &events, now).await?;
    for (planned, event) in &events {
        for change in &event.lifecycle {
            write_lifecycle(target, &mut tx, planned, change, now).await?;
        }
    }
    write_payloads(target, &mut tx, &events, &mut stats).await?;

    let rows: Vec<Vec<Val>> = last
        .iter()
        .map(|(&p, &offset)| {
            vec![
                Val::from(i64::from(p)),
                Val::from(offset as i64 + 1),
                Val::from(now),
            ]
        })
        .collect();
    let suffix =
        target
            .dialect
            .on_conflict_max("t", "log_partition", "next_offset", "updated_at_ms");
    let table = match target.dialect {
        Dialect::Postgres => format!("{} AS t", target.table("ingest_positions")),
        _ => target.table("ingest_positions"),
    };
    for stmt in insert_rows(
        target.dialect,
        &table,
        &["log_partition", "next_offset", "updated_at_ms"],
        &[],
        rows,
        &suffix,
    ) {
        tx.execute(stmt.query()).await.map_err(SqlError::from)?;
    }
    tx.commit().await.map_err(SqlError::from)?;
    stats.records += fresh.len();
    Ok(stats)
}

async fn write_dead_letters(
    target: &SqlTarget,
    tx: &mut Tx,
    fresh: &[&Planned],
    now: i64,
    stats: &mut WriteStats,
) -> Result<(), SqlError> {
    let rows: Vec<Vec<Val>> = fresh
        .iter()
        .filter_map(|p| match &p.plan {
            Plan::Dead(dead) => Some(vec![
                Val::from(i64::from(p.position.partition)),
                Val::from(p.position.offset as i64),
                Val::from(&p.envelope_id),
                Val::from(&p.event_type),
                Val::from(&dead.reason),
                Val::from(p.received_at_ms),
                Val::from(&p.body_sha256),
                Val::Blob(p.body.to_vec()),
                Val::from(now),
            ]),
            Plan::Event(_) => None,
        })
        .collect();
    stats.dead += rows.len();
    let columns = [
        "log_partition",
        "log_offset",
        "envelope_id",
        "event_type",
        "reason",
        "received_at_ms",
        "body_sha256",
        "body",
        "dead_at_ms",
    ];
    let suffix = target
        .dialect
        .on_conflict_ignore(&["log_partition", "log_offset"]);
    for stmt in insert_rows(
        target.dialect,
        &target.table("ingest_dead_letters"),
        &columns,
        &[],
        rows,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    Ok(())
}

/// Terra's Supabase tables type their times: placeholders for them are cast.
pub(crate) fn timestamp_cast(target: &SqlTarget) -> Option<&'static str> {
    (target.variant == Variant::Supabase).then_some("TIMESTAMPTZ")
}
