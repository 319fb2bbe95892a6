//! The queries the service runs against the SQL projection, with bound parameters only, and
//! the mapping of the schema's typed rows (`terra_schema::read`) to the API's messages.

use terra_runtime::ErrorCode;
use terra_schema::read::{self, FromRow, PayloadIndexRow, UserEventRow, UserRow};
use terra_schema::{SqlError, SqlTarget, Stmt};
use tonic::Status;

use crate::proto::{Payload, User, UserEvent};

/// Database errors as gRPC statuses (through the one table, `terra_runtime::ErrorCode`): an
/// unreachable database is UNAVAILABLE (retry); the message never carries a URL or a value.
pub(crate) fn status(err: SqlError) -> Status {
    match err {
        SqlError::Unavailable(_) => ErrorCode::Unavailable.status("database unavailable; retry"),
        other => {
            tracing::error!(error = %other, "query failed");
            ErrorCode::Internal.status("query failed")
        }
    }
}

/// The rows of `stmt` (which selects `T::COLUMNS`), decoded.
pub(crate) async fn fetch<T: FromRow>(target: &SqlTarget, stmt: &Stmt) -> Result<Vec<T>, Status> {
    read::fetch_as(target, stmt).await.map_err(status)
}

pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub(crate) fn user(row: UserRow) -> User {
    User {
        user_id: row.user_id,
        provider: row.provider,
        reference_id: row.reference_id,
        granted_scopes: row.granted_scopes,
        state: row.state,
        created_at: row.created_at,
        first_seen: row.first_seen_ms.map(timestamp),
        updated_at: row.updated_at_ms.map(timestamp),
    }
}

pub(crate) fn user_event(row: UserEventRow) -> UserEvent {
    UserEvent {
        event_type: row.event_type,
        role: row.user_role,
        status: row.status,
        state: row.state,
        provider: row.provider,
        reference_id: row.reference_id,
        scopes: row.scopes,
        payload_id: row.payload_id,
        envelope_id: row.envelope_id,
        generated_at: Some(timestamp(row.version_ts_ms)),
        received_at: Some(timestamp(row.received_at_ms)),
    }
}

pub(crate) fn payload(row: PayloadIndexRow) -> Payload {
    Payload {
        payload_id: row.payload_id,
        kind: row.kind,
        event_type: row.event_type,
        user_id: row.user_id,
        natural_key: row.natural_key,
        start_time: row.start_time,
        end_time: row.end_time,
        start_utc: row.start_utc,
        envelope_id: row.envelope_id,
        log_partition: row.log_partition as u32,
        log_offset: row.log_offset as u64,
        generated_at: Some(timestamp(row.version_ts_ms)),
        received_at: Some(timestamp(row.received_at_ms)),
        body_size: row.body_size as u64,
        body_sha256: row.body_sha256,
    }
}

/// The page cursor of a payload row: its `start_utc` and `row_key`.
pub(crate) fn payload_cursor(row: &PayloadIndexRow) -> Vec<String> {
    vec![
        row.start_utc.clone().unwrap_or_default(),
        row.row_key.clone(),
    ]
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
    Ok(terra_schema::positions::stored(target)
        .await
        .map_err(status)?
        .into_iter()
        .map(|(p, next)| (p, next as i64))
        .collect())
}
