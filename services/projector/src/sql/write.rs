//! One batch, one transaction: the consumed positions are read (and locked) first and written
//! last, so the rows and the positions always agree (exactly-once effect). Records at or
//! before the stored positions are replays and skipped; a batch that starts after them (a
//! gap, e.g. after a rebuild swapped older tables in) is refused with the stored positions so
//! the runner can go back and fill it.
//!
//! Payload rows are written set-wise (a few statements per batch, whatever its size): the
//! payload index is read for the batch's identities, the last writer by version wins, the
//! superseded rows are deleted and the winners inserted.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{Any, Executor, Row, Transaction};

use super::dialect::{Stmt, Val, insert_rows};
use super::{Dialect, SqlError, SqlTarget, Variant};
use crate::plan::{EventPlan, LifecycleChange, PayloadKind, PayloadRow, Plan, Planned, Version};
use crate::{SinkError, WriteStats};

const LOOKUP_CHUNK: usize = 1_000;

type Tx = Transaction<'static, Any>;

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

fn timestamp_cast(target: &SqlTarget) -> Option<&'static str> {
    (target.variant == Variant::Supabase).then_some("TIMESTAMPTZ")
}

/// Users an event mentions exist from then on (data can arrive before the auth event, and the
/// Supabase tables' foreign keys need them); an existing row is never overwritten here.
async fn write_seen_users(
    target: &SqlTarget,
    tx: &mut Tx,
    events: &[(&Planned, &EventPlan)],
    now: i64,
) -> Result<(), SqlError> {
    let mut seen = HashSet::new();
    let mut users = Vec::new();
    let mut ingest = Vec::new();
    for (planned, event) in events {
        for user in &event.seen_users {
            if seen.insert(user.user_id.as_str()) {
                users.push(vec![
                    Val::from(&user.user_id),
                    Val::from(user.reference_id.clone()),
                    Val::from(&user.created_at),
                    Val::from(user.scopes.clone()),
                    Val::from(&user.provider),
                    Val::from("active"),
                ]);
                ingest.push(vec![
                    Val::from(&user.user_id),
                    Val::from(planned.received_at_ms),
                    Val::from(now),
                ]);
            }
        }
    }
    let ts = timestamp_cast(target);
    let suffix = target.dialect.on_conflict_ignore(&["user_id"]);
    let columns = [
        "user_id",
        "reference_id",
        "created_at",
        "granted_scopes",
        "provider",
        "state",
    ];
    let casts = [None, None, ts, None, None, None];
    for stmt in insert_rows(
        target.dialect,
        &target.table("terra_users"),
        &columns,
        &casts,
        users,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    for stmt in insert_rows(
        target.dialect,
        &target.table("ingest_users"),
        &["user_id", "first_seen_ms", "updated_at_ms"],
        &[],
        ingest,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    Ok(())
}

/// One step of one user's lifecycle: always into the history; into `terra_users` only when
/// it is newer than the step that set the current state (an older event arriving late never
/// moves the state back).
async fn write_lifecycle(
    target: &SqlTarget,
    tx: &mut Tx,
    planned: &Planned,
    change: &LifecycleChange,
    now: i64,
) -> Result<(), SqlError> {
    let version = Version {
        ts_ms: event_version_ts(planned),
        partition: i64::from(planned.position.partition),
        offset: planned.position.offset as i64,
        index: 0,
    };
    let user = &change.user;
    let history = vec![vec![
        Val::from(&change.event_id),
        Val::from(&user.user_id),
        Val::from(&planned.event_type),
        Val::from(change.role),
        Val::from(change.status.clone()),
        Val::from(change.state),
        Val::from(&user.provider),
        Val::from(user.reference_id.clone()),
        Val::from(user.scopes.clone()),
        Val::from(&change.payload_id),
        Val::from(&planned.envelope_id),
        Val::from(version.partition),
        Val::from(version.offset),
        Val::from(version.ts_ms),
        Val::from(planned.received_at_ms),
    ]];
    let columns = [
        "event_id",
        "user_id",
        "event_type",
        "user_role",
        "status",
        "state",
        "provider",
        "reference_id",
        "scopes",
        "payload_id",
        "envelope_id",
        "log_partition",
        "log_offset",
        "version_ts_ms",
        "received_at_ms",
    ];
    let suffix = target.dialect.on_conflict_ignore(&["event_id"]);
    for stmt in insert_rows(
        target.dialect,
        &target.table("ingest_user_events"),
        &columns,
        &[],
        history,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }

    let mut select = Stmt::new(
        target.dialect,
        format!(
            "SELECT state_version_ts_ms, state_partition, state_offset FROM {} WHERE user_id = ",
            target.table("ingest_users")
        ),
    );
    select.bind(&user.user_id).push(target.dialect.for_update());
    let stored = tx.fetch_optional(select.query()).await?;
    if let Some(row) = stored {
        let ts: Option<i64> = row.try_get(0)?;
        let partition: Option<i64> = row.try_get(1)?;
        let offset: Option<i64> = row.try_get(2)?;
        if let (Some(ts_ms), Some(partition), Some(offset)) = (ts, partition, offset)
            && (Version {
                ts_ms,
                partition,
                offset,
                index: 0,
            }) > version
        {
            // an older step arriving late: history only
            return Ok(());
        }
    }

    let ts = timestamp_cast(target);
    let mut update_columns = vec!["reference_id", "granted_scopes", "provider"];
    if change.state.is_some() {
        update_columns.push("state");
    }
    let suffix = target
        .dialect
        .on_conflict_update(&["user_id"], &update_columns);
    let row = vec![vec![
        Val::from(&user.user_id),
        Val::from(user.reference_id.clone()),
        Val::from(&user.created_at),
        Val::from(user.scopes.clone()),
        Val::from(&user.provider),
        Val::from(change.state.unwrap_or("active")),
    ]];
    let columns = [
        "user_id",
        "reference_id",
        "created_at",
        "granted_scopes",
        "provider",
        "state",
    ];
    for stmt in insert_rows(
        target.dialect,
        &target.table("terra_users"),
        &columns,
        &[None, None, ts, None, None, None],
        row,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    let row = vec![vec![
        Val::from(&user.user_id),
        Val::from(planned.received_at_ms),
        Val::from(now),
        Val::from(version.ts_ms),
        Val::from(version.partition),
        Val::from(version.offset),
    ]];
    let columns = [
        "user_id",
        "first_seen_ms",
        "updated_at_ms",
        "state_version_ts_ms",
        "state_partition",
        "state_offset",
    ];
    let suffix = target.dialect.on_conflict_update(
        &["user_id"],
        &[
            "updated_at_ms",
            "state_version_ts_ms",
            "state_partition",
            "state_offset",
        ],
    );
    for stmt in insert_rows(
        target.dialect,
        &target.table("ingest_users"),
        &columns,
        &[],
        row,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    Ok(())
}

fn event_version_ts(planned: &Planned) -> i64 {
    match &planned.plan {
        Plan::Event(event) => event
            .payloads
            .first()
            .map_or(planned.received_at_ms, |p| p.version.ts_ms),
        Plan::Dead(_) => planned.received_at_ms,
    }
}

struct Existing {
    payload_id: String,
    kind: String,
    version: Version,
}

async fn write_payloads(
    target: &SqlTarget,
    tx: &mut Tx,
    events: &[(&Planned, &EventPlan)],
    stats: &mut WriteStats,
) -> Result<(), SqlError> {
    // the newest copy of each identity within the batch
    let mut newest: HashMap<&str, (&Planned, &PayloadRow)> = HashMap::new();
    let mut candidates = 0;
    for (planned, event) in events {
        for row in &event.payloads {
            candidates += 1;
            match newest.get(row.identity.as_str()) {
                Some((_, kept)) if kept.version > row.version => {}
                _ => {
                    newest.insert(&row.identity, (planned, row));
                }
            }
        }
    }
    if newest.is_empty() {
        return Ok(());
    }
    let existing = lookup_existing(target, tx, newest.keys().copied().collect()).await?;
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
        ("terra_data_payloads", old_data),
        ("terra_misc_payloads", old_misc),
    ] {
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let mut delete = Stmt::new(
                target.dialect,
                format!("DELETE FROM {} WHERE payload_id IN ", target.table(base)),
            );
            delete.bind_list(chunk.iter());
            tx.execute(delete.query()).await?;
        }
    }

    // one Terra row per payload id (two identities with the same id: the newer)
    let mut by_payload_id: HashMap<&str, &PayloadRow> = HashMap::new();
    for (_, row) in &winners {
        by_payload_id.insert(&row.payload_id, row);
    }
    let mut terra_rows: Vec<&PayloadRow> = by_payload_id.into_values().collect();
    terra_rows.sort_by_key(|row| row.version);
    let supabase = target.variant == Variant::Supabase;
    let data_suffix = if supabase {
        target.dialect.on_conflict_update(
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
        target.dialect.on_conflict_update(
            &["payload_id"],
            &["user_id", "data_type", "payload_type", "created_at"],
        )
    } else {
        String::new()
    };
    let index_suffix = target
        .dialect
        .on_conflict_update(&["row_key"], &INDEX_COLUMNS[1..]);
    for stmt in payload_statements(
        target,
        &terra_rows,
        &winners,
        &data_suffix,
        &misc_suffix,
        &index_suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    Ok(())
}

/// INSERTs of Terra's payload rows and of the payload index.
fn payload_statements(
    target: &SqlTarget,
    terra_rows: &[&PayloadRow],
    index_rows: &[(&Planned, &PayloadRow)],
    data_suffix: &str,
    misc_suffix: &str,
    index_suffix: &str,
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
    let columns = [
        "user_id",
        "data_type",
        "created_at",
        "payload_id",
        "start_time",
        "end_time",
    ];
    statements.extend(insert_rows(
        target.dialect,
        &target.table("terra_data_payloads"),
        &columns,
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
    let columns = [
        "user_id",
        "data_type",
        "payload_type",
        "created_at",
        "payload_id",
    ];
    statements.extend(insert_rows(
        target.dialect,
        &target.table("terra_misc_payloads"),
        &columns,
        &[None, None, None, ts, None],
        misc,
        misc_suffix,
    ));

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
    statements.extend(insert_rows(
        target.dialect,
        &target.table("ingest_payloads"),
        &INDEX_COLUMNS,
        &[],
        index,
        index_suffix,
    ));
    statements
}

/// The benchmark's baseline: the same payload rows as the projector writes, bulk-inserted
/// (multi-row INSERTs, `rows_per_tx` records per transaction) with no positions, no
/// last-writer-wins lookups and no deletes. Returns the rows written.
pub(crate) async fn raw_load(
    target: &SqlTarget,
    batch: &[Planned],
    rows_per_tx: usize,
) -> Result<usize, SqlError> {
    // the newest copy of each identity, as the projector would keep (in log order)
    let mut order: Vec<&str> = Vec::new();
    let mut newest: HashMap<&str, (&Planned, &PayloadRow)> = HashMap::new();
    for planned in batch {
        if let Plan::Event(event) = &planned.plan {
            for row in &event.payloads {
                if newest.insert(&row.identity, (planned, row)).is_none() {
                    order.push(&row.identity);
                }
            }
        }
    }
    let rows: Vec<(&Planned, &PayloadRow)> = order.iter().map(|id| newest[id]).collect();
    let mut seen = HashSet::new();
    for chunk in rows.chunks(rows_per_tx.max(1)) {
        let terra_rows: Vec<&PayloadRow> = chunk
            .iter()
            .map(|(_, r)| *r)
            .filter(|r| seen.insert(r.payload_id.as_str()))
            .collect();
        let mut tx = target.pool.begin().await?;
        for stmt in payload_statements(target, &terra_rows, chunk, "", "", "") {
            tx.execute(stmt.query()).await?;
        }
        tx.commit().await?;
    }
    Ok(rows.len())
}

const INDEX_COLUMNS: [&str; 21] = [
    "row_key",
    "kind",
    "payload_id",
    "user_id",
    "data_type",
    "event_type",
    "natural_key",
    "record_index",
    "start_time",
    "end_time",
    "start_utc",
    "envelope_id",
    "log_partition",
    "log_offset",
    "version_ts_ms",
    "ordering_ts_ms",
    "received_at_ms",
    "body_size",
    "body_sha256",
    "terra_trace_id",
    "terra_reference",
];

async fn lookup_existing(
    target: &SqlTarget,
    tx: &mut Tx,
    identities: Vec<&str>,
) -> Result<HashMap<String, Existing>, SqlError> {
    let mut out = HashMap::new();
    for chunk in identities.chunks(LOOKUP_CHUNK) {
        let mut select = Stmt::new(
            target.dialect,
            format!(
                "SELECT row_key, payload_id, kind, version_ts_ms, log_partition, log_offset, record_index FROM {} WHERE row_key IN ",
                target.table("ingest_payloads")
            ),
        );
        select.bind_list(chunk.iter().copied());
        for row in tx.fetch_all(select.query()).await? {
            let key: String = row.try_get(0)?;
            out.insert(
                key,
                Existing {
                    payload_id: row.try_get(1)?,
                    kind: row.try_get(2)?,
                    version: Version {
                        ts_ms: row.try_get(3)?,
                        partition: row.try_get(4)?,
                        offset: row.try_get(5)?,
                        index: row.try_get(6)?,
                    },
                },
            );
        }
    }
    Ok(out)
}
