//! The queries the service runs against the SQL projection, with bound parameters only, and
//! the mapping of their rows to the API's messages. Rows come back as optional text (see
//! `terra_projector::sql::fetch_rows`), so one code path serves Postgres, MySQL and SQLite.

use terra_projector::sql::{SqlError, SqlTarget, Stmt, fetch_rows};
use tonic::Status;

use crate::proto::{Payload, User, UserEvent};

pub(crate) type Row = Vec<Option<String>>;

/// Database errors as gRPC statuses: an unreachable database is UNAVAILABLE (retry); the
/// message never carries a URL or a value.
pub(crate) fn status(err: SqlError) -> Status {
    match err {
        SqlError::Unavailable(_) => Status::unavailable("database unavailable; retry"),
        other => {
            tracing::error!(error = %other, "query failed");
            Status::internal("query failed")
        }
    }
}

pub(crate) async fn fetch(target: &SqlTarget, stmt: &Stmt) -> Result<Vec<Row>, Status> {
    fetch_rows(target, stmt).await.map_err(status)
}

fn text(row: &Row, i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

fn opt(row: &Row, i: usize) -> Option<String> {
    row.get(i).cloned().flatten()
}

fn int(row: &Row, i: usize) -> i64 {
    opt(row, i).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// `CAST(x AS TEXT)` reads typed (Supabase) and text columns alike.
pub(crate) const USER_COLUMNS: &str = "u.user_id, u.provider, u.reference_id, u.granted_scopes, u.state, CAST(u.created_at AS TEXT), i.first_seen_ms, i.updated_at_ms";

pub(crate) fn users_from(target: &SqlTarget) -> String {
    format!(
        "{} u LEFT JOIN {} i ON i.user_id = u.user_id",
        target.table("terra_users"),
        target.table("ingest_users")
    )
}

pub(crate) fn user(row: &Row) -> User {
    User {
        user_id: text(row, 0),
        provider: text(row, 1),
        reference_id: opt(row, 2),
        granted_scopes: opt(row, 3),
        state: text(row, 4),
        created_at: text(row, 5),
        first_seen: opt(row, 6).map(|_| timestamp(int(row, 6))),
        updated_at: opt(row, 7).map(|_| timestamp(int(row, 7))),
    }
}

pub(crate) const EVENT_COLUMNS: &str = "event_type, user_role, status, state, provider, reference_id, scopes, payload_id, envelope_id, version_ts_ms, received_at_ms, log_partition, log_offset, event_id";

pub(crate) fn user_event(row: &Row) -> UserEvent {
    UserEvent {
        event_type: text(row, 0),
        role: text(row, 1),
        status: opt(row, 2),
        state: opt(row, 3),
        provider: opt(row, 4),
        reference_id: opt(row, 5),
        scopes: opt(row, 6),
        payload_id: text(row, 7),
        envelope_id: text(row, 8),
        generated_at: Some(timestamp(int(row, 9))),
        received_at: Some(timestamp(int(row, 10))),
    }
}

/// Columns of a payload; `row_key` and `record_index` last (cursors).
pub(crate) const PAYLOAD_COLUMNS: &str = "payload_id, kind, event_type, user_id, natural_key, start_time, end_time, start_utc, envelope_id, log_partition, log_offset, version_ts_ms, received_at_ms, body_size, body_sha256, row_key, record_index";
pub(crate) const ROW_KEY: usize = 15;
pub(crate) const RECORD_INDEX: usize = 16;

pub(crate) fn payload(row: &Row) -> Payload {
    into_payload(row.clone())
}

/// [`payload`] moving the row's strings (a page of rows is not copied twice).
pub(crate) fn into_payload(mut row: Row) -> Payload {
    let number = |row: &Row, i: usize| -> i64 {
        row.get(i)
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut take = |i: usize| row.get_mut(i).and_then(Option::take);
    let (payload_id, kind, event_type, user_id, natural_key) =
        (take(0), take(1), take(2), take(3), take(4));
    let (start_time, end_time, start_utc, envelope_id) = (take(5), take(6), take(7), take(8));
    let body_sha256 = take(14);
    Payload {
        payload_id: payload_id.unwrap_or_default(),
        kind: kind.unwrap_or_default(),
        event_type: event_type.unwrap_or_default(),
        user_id,
        natural_key: natural_key.unwrap_or_default(),
        start_time,
        end_time,
        start_utc,
        envelope_id: envelope_id.unwrap_or_default(),
        log_partition: number(&row, 9) as u32,
        log_offset: number(&row, 10) as u64,
        generated_at: Some(timestamp(number(&row, 11))),
        received_at: Some(timestamp(number(&row, 12))),
        body_size: number(&row, 13) as u64,
        body_sha256: body_sha256.unwrap_or_default(),
    }
}

/// The page cursor of a payload row: its `start_utc` and `row_key`.
pub(crate) fn payload_cursor(row: &Row) -> Vec<String> {
    vec![text(row, 7), text(row, ROW_KEY)]
}

pub(crate) fn record_index(row: &Row) -> i64 {
    int(row, RECORD_INDEX)
}

pub(crate) fn log_offset(row: &Row) -> i64 {
    int(row, 10)
}

/// ` AND column IN (?, ...)` when `values` is not empty.
pub(crate) fn push_in(stmt: &mut Stmt, column: &str, values: &[String]) {
    if values.is_empty() {
        return;
    }
    stmt.push(&format!(" AND {column} IN "));
    stmt.bind_list(values.iter());
}

/// ` LIMIT n` (bound).
pub(crate) fn push_limit(stmt: &mut Stmt, limit: usize) {
    stmt.push(" LIMIT ").bind(limit as i64);
}

/// The stored positions (partition → next offset): everything before them is visible.
pub(crate) async fn positions(target: &SqlTarget) -> Result<Vec<(u32, i64)>, Status> {
    let stmt = target.statement(format!(
        "SELECT log_partition, next_offset FROM {} ORDER BY log_partition",
        target.table("ingest_positions")
    ));
    Ok(fetch(target, &stmt)
        .await?
        .iter()
        .map(|r| (int(r, 0) as u32, int(r, 1)))
        .collect())
}
