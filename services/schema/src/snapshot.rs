//! A deterministic dump of a projection's contents (everything but wall-clock write times),
//! to compare two projections of the same log: a rebuild with the live tables, a run that
//! was killed and restarted with a clean one.

use crate::read::{self, Value};
use crate::tables::*;
use crate::{SqlError, SqlTarget};

/// Rows of every table, each column as optional text, in a fixed order.
pub type Snapshot = Vec<Vec<Vec<Option<String>>>>;

/// Dumps the projection `target` names.
pub async fn snapshot(target: &SqlTarget) -> Result<Snapshot, SqlError> {
    let t = |base: &str| target.table(base);
    let queries = [
        format!(
            "SELECT user_id, reference_id, CAST(created_at AS TEXT), granted_scopes, provider, state FROM {} ORDER BY user_id",
            t(TERRA_USERS)
        ),
        format!(
            "SELECT user_id, data_type, CAST(created_at AS TEXT), payload_id, CAST(start_time AS TEXT), CAST(end_time AS TEXT) FROM {} ORDER BY payload_id, user_id",
            t(TERRA_DATA_PAYLOADS)
        ),
        format!(
            "SELECT user_id, data_type, payload_type, CAST(created_at AS TEXT), payload_id FROM {} ORDER BY payload_id",
            t(TERRA_MISC_PAYLOADS)
        ),
        format!(
            "SELECT row_key, kind, payload_id, user_id, natural_key, envelope_id, log_partition, log_offset, version_ts_ms, body_sha256, start_utc FROM {} ORDER BY row_key",
            t(INGEST_PAYLOADS)
        ),
        format!(
            "SELECT event_id, user_id, event_type, user_role, state, log_partition, log_offset FROM {} ORDER BY event_id",
            t(INGEST_USER_EVENTS)
        ),
        format!(
            "SELECT user_id, first_seen_ms, state_version_ts_ms, state_partition, state_offset FROM {} ORDER BY user_id",
            t(INGEST_USERS)
        ),
        format!(
            "SELECT log_partition, log_offset, reason, body_sha256 FROM {} ORDER BY log_partition, log_offset",
            t(INGEST_DEAD_LETTERS)
        ),
        format!(
            "SELECT log_partition, next_offset FROM {} WHERE log_partition >= 0 ORDER BY log_partition",
            t(INGEST_POSITIONS)
        ),
    ];
    let mut out = Vec::with_capacity(queries.len());
    for sql in queries {
        out.push(rows(target, &sql).await?);
    }
    Ok(out)
}

/// Every column of every row as optional text (numbers as their decimal text).
/// `CAST(x AS TEXT)` is rewritten for MySQL.
pub async fn rows(target: &SqlTarget, sql: &str) -> Result<Vec<Vec<Option<String>>>, SqlError> {
    Ok(read::fetch(target, &target.statement(sql))
        .await?
        .into_iter()
        .map(|row| row.into_iter().map(Value::into_text).collect())
        .collect())
}
