//! Payload rows in one batch's transaction, set-wise: the newest copy per identity, one
//! lookup in the payload index, losers dropped, superseded Terra rows deleted, winners
//! inserted, and their index rows inserted (identities new to the index) or upserted.

use std::collections::HashMap;

use sqlx::{Executor, Row};

use terra_projector::WriteStats;
use terra_projector::plan::{EventPlan, PayloadKind, PayloadRow, Planned, Version};
use terra_schema::positions::Tx;
use terra_schema::tables::{
    INGEST_PAYLOADS, INGEST_PAYLOADS_COLUMNS, PAYLOAD_VERSION_COLUMNS, TERRA_DATA_PAYLOADS,
    TERRA_DATA_PAYLOADS_COLUMNS, TERRA_MISC_PAYLOADS, TERRA_MISC_PAYLOADS_COLUMNS,
};
use terra_schema::{SqlError, SqlTarget, Stmt, Val, Variant, insert_rows};

use crate::write::timestamp_cast;

/// Values per `IN` list of a lookup: a power of 4, so a full chunk needs no padding
/// (`Stmt::bind_in_list`).
pub(crate) const LOOKUP_CHUNK: usize = 1_024;

struct Existing {
    payload_id: String,
    kind: String,
    version: Version,
}

/// Writes the batch's payload rows; returns the final payload ids by
/// `crate::claims::claim_key`, for the history rows.
pub(crate) async fn write_payloads(
    target: &SqlTarget,
    tx: &mut Tx,
    events: &[(&Planned, &EventPlan)],
    stats: &mut WriteStats,
) -> Result<HashMap<String, String>, SqlError> {
    let identities: Vec<&str> = {
        let mut ids: Vec<&str> = events
            .iter()
            .flat_map(|(_, e)| e.payloads.iter().map(|r| r.identity.as_str()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    if identities.is_empty() {
        return Ok(HashMap::new());
    }
    let existing = lookup_existing(target, tx, identities).await?;
    let final_ids = crate::claims::resolve(target, tx, events).await?;
    // the rows with their final ids
    let renamed: Vec<(&Planned, PayloadRow)> = events
        .iter()
        .flat_map(|(planned, event)| {
            event.payloads.iter().map(|row| {
                let mut row = row.clone();
                let key = crate::claims::claim_key(&row.identity, &row.payload_id);
                if let Some(id) = final_ids.get(&key) {
                    row.payload_id = id.clone();
                }
                (*planned, row)
            })
        })
        .collect();
    // the newest copy of each identity within the batch
    let mut newest: HashMap<&str, (&Planned, &PayloadRow)> = HashMap::new();
    let mut candidates = 0;
    for (planned, row) in &renamed {
        candidates += 1;
        match newest.get(row.identity.as_str()) {
            Some((_, kept)) if kept.version > row.version => {}
            _ => {
                newest.insert(&row.identity, (planned, row));
            }
        }
    }
    let mut winners: Vec<(&Planned, &PayloadRow)> = Vec::with_capacity(newest.len());
    let (mut old_data, mut old_misc) = (Vec::new(), Vec::new());
    for (identity, (planned, row)) in &newest {
        match existing.get(*identity) {
            Some(stored) if stored.version > row.version => continue,
            Some(stored) => {
                if stored.kind == PayloadKind::Data.as_str() {
                    old_data.push(stored.payload_id.clone());
                } else {
                    old_misc.push(stored.payload_id.clone());
                }
            }
            None => {}
        }
        winners.push((planned, row));
    }
    stats.superseded += candidates - winners.len();
    stats.payloads += winners.len();
    winners.sort_by_key(|(_, row)| row.version);

    for (base, ids) in [
        (TERRA_DATA_PAYLOADS, old_data),
        (TERRA_MISC_PAYLOADS, old_misc),
    ] {
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let mut delete = Stmt::new(
                target.dialect(),
                format!("DELETE FROM {} WHERE payload_id IN ", target.table(base)),
            );
            delete.bind_in_list(chunk.iter());
            tx.execute(delete.query()).await?;
        }
    }

    // one Terra row per payload id (unique per identity since the claims; rows an earlier
    // version gave one id stay one row); none without a user: Terra's `user_id` is NOT NULL
    let mut by_payload_id: HashMap<&str, &PayloadRow> = HashMap::new();
    for (_, row) in &winners {
        if row.user_id.is_some() {
            by_payload_id.insert(&row.payload_id, row);
        }
    }
    let mut terra_rows: Vec<&PayloadRow> = by_payload_id.into_values().collect();
    terra_rows.sort_by_key(|row| row.version);
    let supabase = target.variant() == Variant::Supabase;
    let data_suffix = if supabase {
        target.dialect().on_conflict_update(
            &["payload_id"],
            &[
                "user_id",
                "data_type",
                "created_at",
                "start_time",
                "end_time",
            ],
        )
    } else {
        String::new()
    };
    let misc_suffix = if supabase {
        target.dialect().on_conflict_update(
            &["payload_id"],
            &["user_id", "data_type", "payload_type", "created_at"],
        )
    } else {
        String::new()
    };
    // the payload index: identities it has no row for yet (most of them) are plain inserts,
    // the others an upsert. The lookup above ran in this transaction, under the writer lock,
    // so it is what the table holds. On SQLite a plain insert also needs no statement
    // journal (`Dialect::insert_into`), where an upsert's update journals every page it
    // touches: a third of the inserts' CPU in a Python sqlite3 check of 4,000-row batches.
    let (replacing, new): (Vec<_>, Vec<_>) = winners
        .iter()
        .copied()
        .partition(|(_, row)| existing.contains_key(row.identity.as_str()));
    let index_suffix = target
        .dialect()
        .on_conflict_update(&["row_key"], &INGEST_PAYLOADS_COLUMNS[1..]);
    let mut statements = payload_statements(target, &terra_rows, &new, &data_suffix, &misc_suffix);
    statements.extend(index_statements(target, &replacing, &index_suffix));
    for stmt in statements {
        tx.execute(stmt.query()).await?;
    }
    Ok(final_ids)
}

/// Plain multi-row INSERTs (no conflict handling) of Terra's rows for `terra_rows` and of the
/// payload index for `index_rows`: what the sink writes once it has chosen the winners, for a
/// caller that has chosen them itself (the benchmarks' raw bulk load, in `terra-bench`).
pub fn payload_inserts(
    target: &SqlTarget,
    terra_rows: &[&PayloadRow],
    index_rows: &[(&Planned, &PayloadRow)],
) -> Vec<Stmt> {
    payload_statements(target, terra_rows, index_rows, "", "")
}

/// INSERTs of Terra's payload rows and plain INSERTs of their payload index rows.
fn payload_statements(
    target: &SqlTarget,
    terra_rows: &[&PayloadRow],
    index_rows: &[(&Planned, &PayloadRow)],
    data_suffix: &str,
    misc_suffix: &str,
) -> Vec<Stmt> {
    let ts = timestamp_cast(target);
    let mut statements = Vec::new();
    let data: Vec<Vec<Val>> = terra_rows
        .iter()
        .filter(|r| r.kind == PayloadKind::Data)
        .map(|r| {
            vec![
                Val::from(r.user_id.clone()),
                Val::from(r.data_type.clone()),
                Val::from(&r.created_at),
                Val::from(&r.payload_id),
                Val::from(r.start_time.clone()),
                Val::from(r.end_time.clone()),
            ]
        })
        .collect();
    statements.extend(insert_rows(
        target.dialect(),
        &target.table(TERRA_DATA_PAYLOADS),
        &TERRA_DATA_PAYLOADS_COLUMNS,
        &[None, None, ts, None, ts, ts],
        data,
        data_suffix,
    ));
    let misc: Vec<Vec<Val>> = terra_rows
        .iter()
        .filter(|r| r.kind == PayloadKind::Misc)
        .map(|r| {
            vec![
                Val::from(r.user_id.clone()),
                Val::from(r.data_type.clone()),
                Val::from(&r.event_type),
                Val::from(&r.created_at),
                Val::from(&r.payload_id),
            ]
        })
        .collect();
    statements.extend(insert_rows(
        target.dialect(),
        &target.table(TERRA_MISC_PAYLOADS),
        &TERRA_MISC_PAYLOADS_COLUMNS,
        &[None, None, None, ts, None],
        misc,
        misc_suffix,
    ));

    statements.extend(index_statements(target, index_rows, ""));
    statements
}

/// INSERTs of the payload index's rows for `index_rows`, each statement ending in `suffix`.
fn index_statements(
    target: &SqlTarget,
    index_rows: &[(&Planned, &PayloadRow)],
    suffix: &str,
) -> Vec<Stmt> {
    let index: Vec<Vec<Val>> = index_rows
        .iter()
        .map(|(planned, r)| {
            vec![
                Val::from(&r.identity),
                Val::from(r.kind.as_str()),
                Val::from(&r.payload_id),
                Val::from(r.user_id.clone()),
                Val::from(r.data_type.clone()),
                Val::from(&r.event_type),
                Val::from(&r.natural_key),
                Val::from(r.record_index),
                Val::from(r.start_time.clone()),
                Val::from(r.end_time.clone()),
                Val::from(r.start_utc.clone()),
                Val::from(&planned.envelope_id),
                Val::from(r.version.partition),
                Val::from(r.version.offset),
                Val::from(r.version.ts_ms),
                Val::from(r.ordering_ts_ms),
                Val::from(planned.received_at_ms),
                Val::from(planned.body_size),
                Val::from(&r.body_sha256),
                Val::from(r.terra_trace_id.clone()),
                Val::from(r.terra_reference.clone()),
            ]
        })
        .collect();
    insert_rows(
        target.dialect(),
        &target.table(INGEST_PAYLOADS),
        &INGEST_PAYLOADS_COLUMNS,
        &[],
        index,
        suffix,
    )
}

async fn lookup_existing(
    target: &SqlTarget,
    tx: &mut Tx,
    identities: Vec<&str>,
) -> Result<HashMap<String, Existing>, SqlError> {
    let mut out = HashMap::new();
    for chunk in identities.chunks(LOOKUP_CHUNK) {
        let mut select = Stmt::new(
            target.dialect(),
            format!(
                "SELECT row_key, payload_id, kind, {} FROM {} WHERE row_key IN ",
                PAYLOAD_VERSION_COLUMNS.join(", "),
                target.table(INGEST_PAYLOADS)
            ),
        );
        select.bind_in_list(chunk.iter().copied());
        for row in tx.fetch_all(select.query()).await? {
            let key: String = row.try_get(0)?;
            out.insert(
                key,
                Existing {
                    payload_id: row.try_get(1)?,
                    kind: row.try_get(2)?,
                    version: Version::from_parts([
                        row.try_get(3)?,
                        row.try_get(4)?,
                        row.try_get(5)?,
                        row.try_get(6)?,
                    ]),
                },
            );
        }
    }
    Ok(out)
}
