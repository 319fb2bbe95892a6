//! The fan-out's rows: events, deliveries (pending, or as their first attempt left them) and
//! the statements that write them.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{Executor, Row};
use terra_schema::positions::Tx;
use terra_schema::tables::WEBHOOK_DELIVERIES;
use terra_schema::{Dialect, SqlError, SqlTarget, Stmt, Val, insert_all, insert_unnest};

use crate::endpoint::Ordering;
use crate::first::First;
use crate::store::{EventRow, Next, ordering_key, text};

/// Body bytes per INSERT at most (a row alone may be larger): under MySQL's
/// `max_allowed_packet` (16 MiB by default on MariaDB, 64 MiB on MySQL 8).
pub(super) const STATEMENT_BYTES: usize = 4 << 20;

/// Rows cut into runs whose blobs (column `blob`) add up to at most `limit` bytes.
pub(super) fn by_bytes(rows: Vec<Vec<Val>>, blob: usize, limit: usize) -> Vec<Vec<Vec<Val>>> {
    let mut chunks: Vec<Vec<Vec<Val>>> = Vec::new();
    let mut size = 0;
    for row in rows {
        let len = match row.get(blob) {
            Some(Val::Blob(b)) => b.len(),
            _ => 0,
        };
        if chunks.is_empty() || (size + len > limit && size > 0) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = chunks.last_mut() {
            last.push(row);
        }
    }
    chunks
}

pub(super) const EVENT_COLUMNS: [&str; 13] = [
    "envelope_id",
    "log_partition",
    "log_offset",
    "source",
    "event_type",
    "user_id",
    "received_at_ms",
    "terra_reference",
    "terra_trace_id",
    "ordering_timestamp_ms",
    "traceparent",
    "body",
    "body_encoding",
];

const DELIVERY_COLUMNS: [&str; 17] = [
    "endpoint",
    "envelope_id",
    "user_id",
    "ordering_key",
    "event_type",
    "state",
    "attempts",
    "next_attempt_at_ms",
    "created_at_ms",
    "finished_at_ms",
    "last_status",
    "last_error",
    "lease_until_ms",
    "lease_token",
    "first_started_at_ms",
    "first_duration_ms",
    "first_response",
];

/// An event's row; `at`: its (partition, offset, received at). The body as the `body`
/// module stores it.
pub(super) fn event_row(event: &EventRow, at: (i64, i64, i64)) -> Vec<Val> {
    let (partition, offset, received_at_ms) = at;
    let (body, encoding) = crate::body::encode(&event.body);
    vec![
        Val::from(&event.envelope_id),
        Val::from(partition),
        Val::from(offset),
        Val::from(&event.source),
        Val::from(&event.event_type),
        Val::from(event.user_id.clone()),
        Val::from(received_at_ms),
        Val::from(event.terra_reference.clone()),
        Val::from(event.terra_trace_id.clone()),
        Val::from(event.ordering_timestamp_ms),
        Val::from(event.traceparent.clone()),
        Val::Blob(body),
        Val::from(encoding),
    ]
}

/// A delivery's row: pending and due now when not sent; as its first attempt left it
/// (delivered, due again, dead); pending and leased to an attempt still in flight. A delivered
/// one keeps its attempt in its row (see [`delivered_at_once`]); the others' attempts go in
/// `webhook_attempts`. `ordering_key` only for an endpoint that orders per user (see
/// migration `ordering_key`: only those rows are in the index of the per_user check).
pub(super) fn delivery_row(
    (endpoint, ordering): (&str, Ordering),
    event: &EventRow,
    first: &First,
    now: i64,
) -> Vec<Val> {
    let none = || Val::from(None::<i64>);
    let user = event.user_id.as_deref().map(ordering_key);
    let key = user.clone().filter(|_| ordering == Ordering::PerUser);
    let mut row = vec![
        Val::from(endpoint),
        Val::from(&event.envelope_id),
        Val::from(user),
        Val::from(key),
        Val::from(&event.event_type),
    ];
    let status = |result: &crate::send::AttemptResult| Val::from(result.status.map(i64::from));
    let rest = match first {
        First::NotSent => vec![
            Val::from("pending"),
            Val::from(0),
            Val::from(now),
            Val::from(now),
            none(),
            none(),
            Val::from(None::<String>),
            none(),
            Val::from(None::<String>),
            none(),
            none(),
            Val::from(None::<String>),
        ],
        First::InFlight {
            token,
            lease_until_ms,
            ..
        } => vec![
            Val::from("pending"),
            Val::from(1),
            Val::from(now),
            Val::from(now),
            none(),
            none(),
            Val::from(None::<String>),
            Val::from(*lease_until_ms),
            Val::from(token.as_str()),
            none(),
            none(),
            Val::from(None::<String>),
        ],
        First::Done { result, next } => {
            let (state, next_at, finished, error) = match next {
                Next::Delivered => ("delivered", now, Some(now), None),
                Next::Retry { at_ms } => ("pending", *at_ms, None, result.error.clone()),
                Next::Dead { reason } => ("dead", now, Some(now), Some(reason.clone())),
                Next::Unchanged => ("pending", now, None, result.error.clone()),
            };
            let inline = delivered_at_once(first);
            vec![
                Val::from(state),
                Val::from(1),
                Val::from(next_at),
                Val::from(now),
                Val::from(finished),
                status(result),
                Val::from(error),
                none(),
                Val::from(None::<String>),
                Val::from(inline.then_some(result.started_at_ms)),
                Val::from(inline.then_some(result.duration.as_millis() as i64)),
                Val::from(result.response.clone().filter(|_| inline)),
            ]
        }
    };
    row.extend(rest);
    row
}

/// Whether a pair's first attempt delivered it: the delivery is written final, that attempt
/// its only one, so the attempt is kept in the delivery's row rather than in
/// `webhook_attempts` (sparing the common case an attempt row and reading back the delivery's
/// id; `admin::delivery` lists it as any other, id 0), and its event's body is not kept.
pub(super) fn delivered_at_once(first: &First) -> bool {
    matches!(
        first,
        First::Done {
            next: Next::Delivered,
            ..
        }
    )
}

/// Inserts the deliveries; with `ids`, returns the id of each by (envelope id, endpoint)
/// (`RETURNING` on Postgres and SQLite, read back on MySQL).
pub(super) async fn insert_deliveries(
    target: &SqlTarget,
    tx: &mut Tx,
    rows: Vec<Vec<Val>>,
    ids: Option<Vec<String>>,
) -> Result<HashMap<(String, String), i64>, SqlError> {
    // a chunk whose records another replica wrote already (all before the stored positions)
    // has no rows: on Postgres the `UNNEST` insert of no rows types every column `text` and
    // is refused (42804, `column "attempts" is of type integer`), the batch failed after the
    // next chunk's first attempts had gone out, and its retry sent them again
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let dialect = target.dialect();
    let d = target.table(WEBHOOK_DELIVERIES);
    let mut suffix = dialect.on_conflict_ignore(&["envelope_id", "endpoint"]);
    let returning = ids.is_some() && dialect != Dialect::MySql;
    if returning {
        suffix.push_str(RETURNING_IDS);
    }
    let mut found = HashMap::new();
    let plain = match dialect {
        Dialect::Postgres => {
            let back = if returning { RETURNING_IDS } else { "" };
            plain_first(tx, &insert_unnest(&d, &DELIVERY_COLUMNS, &rows, back)).await?
        }
        Dialect::MySql | Dialect::Sqlite => None,
    };
    let returned = match plain {
        Some(returned) => returned,
        None => {
            let mut returned = Vec::new();
            for stmt in insert_all(dialect, &d, &DELIVERY_COLUMNS, rows, &suffix) {
                if returning {
                    returned.extend(tx.fetch_all(stmt.query()).await?);
                } else {
                    tx.execute(stmt.query()).await?;
                }
            }
            returned
        }
    };
    for row in &returned {
        found.insert(id_key(row)?, row.try_get(0)?);
    }
    if let (Some(envelopes), false) = (ids, returning) {
        for chunk in envelopes.chunks(1_000) {
            let mut stmt = Stmt::new(
                dialect,
                format!("SELECT id, envelope_id, endpoint FROM {d} WHERE envelope_id IN "),
            );
            stmt.bind_list(chunk.iter().map(String::as_str));
            for row in tx.fetch_all(stmt.query()).await? {
                found.insert(id_key(&row)?, row.try_get(0)?);
            }
        }
    }
    Ok(found)
}

const RETURNING_IDS: &str = " RETURNING id, envelope_id, endpoint";

/// Postgres: the deliveries inserted by a plain `INSERT` under a savepoint, with what it
/// returned; `None` when a pair was already there (the same event twice in the log), rolled
/// back to the savepoint for the `ON CONFLICT DO NOTHING` insert that skips it. Each pair is
/// new but for such duplicates, and `ON CONFLICT`'s speculative insertion cost 13 % of the
/// insert in psql (102,400 rows of `webhook_deliveries` in one transaction, 1,024 per
/// statement: 0.92 s against 0.80 s as plain inserts, each under its savepoint).
async fn plain_first(tx: &mut Tx, stmt: &Stmt) -> Result<Option<Vec<AnyRow>>, SqlError> {
    tx.execute("SAVEPOINT fan_out_deliveries").await?;
    match tx.fetch_all(stmt.query()).await {
        Ok(returned) => {
            tx.execute("RELEASE SAVEPOINT fan_out_deliveries").await?;
            Ok(Some(returned))
        }
        Err(err) if err.as_database_error().and_then(|e| e.code()).as_deref() == Some("23505") => {
            tx.execute("ROLLBACK TO SAVEPOINT fan_out_deliveries")
                .await?;
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

fn id_key(row: &AnyRow) -> Result<(String, String), SqlError> {
    Ok((
        text(row, 1)?.unwrap_or_default(),
        text(row, 2)?.unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk with no deliveries (its records written by another replica) inserts nothing
    /// and fails nothing, on every dialect. On Postgres it failed with 42804, and the batch
    /// was written again after its next chunk's first attempts had gone out: sent twice
    /// (`tests/first.rs`, `shared_log::postgres`, failed about one run in six).
    #[tokio::test]
    async fn a_chunk_without_deliveries_inserts_nothing() {
        for dialect in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            let db = terra_testkit::TestDb::new(dialect).await;
            let target = SqlTarget::connect(&db.config()).expect("a SQL config");
            terra_schema::migrate_set(&target, terra_schema::TableSet::Webhooks)
                .await
                .expect("webhook migrations");
            let mut tx = target.pool().begin().await.unwrap();
            let found = insert_deliveries(&target, &mut tx, Vec::new(), Some(Vec::new()))
                .await
                .unwrap_or_else(|e| panic!("{dialect:?}: {e}"));
            assert!(found.is_empty());
            tx.commit().await.unwrap();
            db.drop_now().await;
        }
    }

    #[test]
    fn rows_are_cut_by_body_bytes_and_a_large_row_goes_alone() {
        let row = |n: usize| vec![Val::from(1i64), Val::Blob(vec![0; n])];
        let chunks = by_bytes(vec![row(3), row(3), row(3), row(10), row(1)], 1, 6);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 1, 1, 1]);
    }
}
