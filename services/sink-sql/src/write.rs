//! One batch, one transaction: the consumed positions are read (under the writer lock, so
//! two writers take turns even before any position is stored) first and written last, so
//! the rows and the positions always agree (exactly-once effect). Records at or
//! before the stored positions are replays and skipped; a batch that starts after them (a
//! gap, e.g. after a rebuild swapped older tables in) is refused with the stored positions so
//! the runner can go back and fill it.
//!
//! Payload rows are written set-wise (a few statements per batch, whatever its size): the
//! payload index is read for the batch's identities, the last writer by version wins, the
//! superseded rows are deleted and the winners inserted.

use std::collections::BTreeMap;

use sqlx::Executor;
use terra_projector::plan::{EventPlan, Plan, Planned};
use terra_projector::{SinkError, WriteStats};
use terra_schema::positions::{self, Tx};
use terra_schema::tables::{INGEST_DEAD_LETTERS, INGEST_DEAD_LETTERS_COLUMNS, INGEST_POSITIONS};
use terra_schema::{SqlError, SqlTarget, Val, Variant, insert_rows};

use crate::payloads::write_payloads;
use crate::sink_error;
use crate::users::{Step, write_lifecycle, write_seen_users};

/// Writes `batch` in one transaction.
pub(crate) async fn write_batch(
    target: &SqlTarget,
    batch: &[Planned],
) -> Result<WriteStats, SinkError> {
    let mut tx = target
        .pool()
        .begin()
        .await
        .map_err(|e| sink_error(e.into()))?;
    let positions = positions::read(target, &mut tx, true)
        .await
        .map_err(sink_error)?;
    let mut stats = WriteStats::default();
    let mut fresh: Vec<&Planned> = Vec::with_capacity(batch.len());
    let mut resume = positions::Resume::new(&positions, true);
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for planned in batch {
        let partition = planned.position.partition;
        match resume.place(partition, planned.position.offset) {
            positions::Place::Replay => {
                stats.replayed += 1;
                continue;
            }
            positions::Place::Gap => return Err(SinkError::Behind(positions)),
            positions::Place::Next => {}
        }
        last.insert(partition, planned.position.offset);
        fresh.push(planned);
    }
    if fresh.is_empty() {
        tx.rollback().await.map_err(|e| sink_error(e.into()))?;
        return Ok(stats);
    }

    let now = terra_core::keys::now_ms();
    write_rows(target, &mut tx, &fresh, &last, now, &mut stats)
        .await
        .map_err(sink_error)?;
    tx.commit().await.map_err(|e| sink_error(e.into()))?;
    stats.records += fresh.len();
    Ok(stats)
}

/// The rows of the fresh records, then their positions.
async fn write_rows(
    target: &SqlTarget,
    tx: &mut Tx,
    fresh: &[&Planned],
    last: &BTreeMap<u32, u64>,
    now: i64,
    stats: &mut WriteStats,
) -> Result<(), SqlError> {
    write_dead_letters(target, tx, fresh, now, stats).await?;
    let events: Vec<(&Planned, &EventPlan)> = fresh
        .iter()
        .filter_map(|p| match &p.plan {
            Plan::Event(e) => Some((*p, e)),
            Plan::Dead(_) => None,
        })
        .collect();
    write_seen_users(target, tx, &events, now).await?;
    // payloads first: they give the final payload ids the history rows point at
    let final_ids = write_payloads(target, tx, &events, stats).await?;
    let mut steps = Vec::new();
    for (planned, event) in &events {
        for change in &event.lifecycle {
            let key = crate::claims::claim_key(&change.payload_identity, &change.payload_id);
            let payload_id = final_ids.get(&key).unwrap_or(&change.payload_id);
            steps.push(Step {
                planned,
                change,
                payload_id,
            });
        }
    }
    write_lifecycle(target, tx, &steps, now).await?;

    positions::write(target, tx, INGEST_POSITIONS, last, now).await
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
    let suffix = target
        .dialect()
        .on_conflict_ignore(&INGEST_DEAD_LETTERS_COLUMNS[..2]);
    for stmt in insert_rows(
        target.dialect(),
        &target.table(INGEST_DEAD_LETTERS),
        &INGEST_DEAD_LETTERS_COLUMNS,
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
    (target.variant() == Variant::Supabase).then_some("TIMESTAMPTZ")
}
