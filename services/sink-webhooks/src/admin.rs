//! What operators see and do with deliveries, over the webhook tables (the gRPC
//! `WebhookDeliveries` service and `terra-ingest deliveries` both call these): endpoints with
//! their state and backlog, deliveries by filter, one delivery with its attempts, dead letters
//! re-queued, and an endpoint's state set.
//!
//! [`set_state`] is the one place an endpoint changes state, for operators and the dispatcher
//! alike (a probe answered 2xx, a 410, failing for too long), so enabling always releases the
//! backlog the same way.

use std::collections::BTreeMap;

use sqlx::Executor;
use terra_schema::read;
use terra_schema::{SqlError, SqlTarget};

/// `webhook_endpoints`.
pub const ENDPOINTS: &str = "webhook_endpoints";
/// `webhook_deliveries`.
pub const DELIVERIES: &str = "webhook_deliveries";
/// `webhook_attempts`.
pub const ATTEMPTS: &str = "webhook_attempts";

mod rows;

pub use rows::{
    AttemptRow, Backlog, DeliveryFilter, DeliveryRow, DeliveryState, EndpointState, EndpointStatus,
    MAX_LIMIT,
};
use rows::{Cells, attempt_row, delivery_row, inline_attempt};

const DELIVERY_COLUMNS: &str = "id, endpoint, envelope_id, user_id, event_type, state, attempts, next_attempt_at_ms, lease_until_ms, created_at_ms, finished_at_ms, last_status, last_error";
/// The attempt columns, `probe` as 0/1 whether the column is a BOOLEAN or an INTEGER
/// (Postgres cannot test an INTEGER as a condition; sqlx's Any driver cannot decode SQLite's
/// BOOLEAN).
fn attempt_columns(target: &SqlTarget) -> &'static str {
    match target.dialect() {
        terra_schema::Dialect::Postgres => {
            "id, attempt, CAST(probe AS INTEGER), started_at_ms, duration_ms, status_code, error_class, error, response"
        }
        _ => {
            "id, attempt, CASE WHEN probe THEN 1 ELSE 0 END, started_at_ms, duration_ms, status_code, error_class, error, response"
        }
    }
}

/// Every endpoint in the tables (its state row, or deliveries waiting or dead) or in
/// `configured` (no row yet: enabled), by name, with its backlog as of `now_ms`.
pub async fn endpoints(
    target: &SqlTarget,
    configured: &[String],
    now_ms: i64,
) -> Result<Vec<EndpointStatus>, SqlError> {
    let mut out: BTreeMap<String, EndpointStatus> = configured
        .iter()
        .map(|name| (name.clone(), EndpointStatus::new(name, true)))
        .collect();
    let stmt = target.statement(format!(
        "SELECT name, state, reason, changed_at_ms, failing_since_ms, last_success_ms, next_probe_at_ms FROM {}",
        target.table(ENDPOINTS)
    ));
    for row in read::fetch(target, &stmt).await? {
        let mut c = Cells::new(row);
        let name = c.text("name")?;
        let status = out
            .entry(name.clone())
            .or_insert_with(|| EndpointStatus::new(&name, false));
        status.state = EndpointState::parse(&c.text("state")?).map_err(SqlError::Schema)?;
        status.reason = c.opt_text();
        status.changed_at_ms = c.opt_int();
        status.failing_since_ms = c.opt_int();
        status.last_success_ms = c.opt_int();
        status.next_probe_at_ms = c.opt_int();
    }
    let mut stmt = target.statement(
        "SELECT endpoint, COUNT(CASE WHEN state = 'pending' THEN 1 END), \
         COUNT(CASE WHEN state = 'pending' AND next_attempt_at_ms <= ",
    );
    stmt.bind(now_ms).push(&format!(
        " THEN 1 END), COUNT(CASE WHEN state = 'dead' THEN 1 END), \
         MIN(CASE WHEN state = 'pending' THEN created_at_ms END) \
         FROM {} WHERE state IN ('pending', 'dead') GROUP BY endpoint",
        target.table(DELIVERIES)
    ));
    for row in read::fetch(target, &stmt).await? {
        let mut c = Cells::new(row);
        let name = c.text("endpoint")?;
        let status = out
            .entry(name.clone())
            .or_insert_with(|| EndpointStatus::new(&name, false));
        status.backlog = Backlog {
            pending: c.int("pending")?.max(0) as u64,
            due: c.int("due")?.max(0) as u64,
            dead: c.int("dead")?.max(0) as u64,
            oldest_pending_created_at_ms: c.opt_int(),
        };
    }
    Ok(out.into_values().collect())
}

/// A page of deliveries matching `filter`, in id order.
pub async fn deliveries(
    target: &SqlTarget,
    filter: &DeliveryFilter,
) -> Result<Vec<DeliveryRow>, SqlError> {
    let mut stmt = target.statement(format!(
        "SELECT {DELIVERY_COLUMNS} FROM {} WHERE id > ",
        target.table(DELIVERIES)
    ));
    stmt.bind(filter.after_id);
    let texts = [
        ("endpoint", filter.endpoint.as_deref()),
        ("user_id", filter.user_id.as_deref()),
        ("envelope_id", filter.envelope_id.as_deref()),
    ];
    for (column, value) in texts {
        if let Some(value) = value {
            stmt.push(&format!(" AND {column} = ")).bind(value);
        }
    }
    if let Some(state) = filter.state {
        stmt.push(&state_terms(state));
    }
    // a number of ours, not the caller's text
    stmt.push(&format!(
        " ORDER BY id LIMIT {}",
        filter.limit.clamp(1, MAX_LIMIT)
    ));
    read::fetch(target, &stmt)
        .await?
        .into_iter()
        .map(delivery_row)
        .collect()
}

/// ` AND state = '…'`, a literal of ours (not the caller's text), so that the indexes that
/// cover only some states serve it (see migration `pending_indexes`): pending rows are in
/// `due` and `user`, finished ones (delivered or dead, `finished_at_ms` always set) in
/// `finished`.
fn state_terms(state: DeliveryState) -> String {
    let finished = match state {
        DeliveryState::Pending => "",
        DeliveryState::Delivered | DeliveryState::Dead => " AND finished_at_ms IS NOT NULL",
    };
    format!(" AND state = '{}'{finished}", state.as_str())
}

/// One delivery and its attempts in the order they were made; `None` when there is no such id.
/// A first attempt kept in the delivery's row (delivered at once by the fan-out) comes first,
/// with id 0.
pub async fn delivery(
    target: &SqlTarget,
    id: i64,
) -> Result<Option<(DeliveryRow, Vec<AttemptRow>)>, SqlError> {
    let mut stmt = target.statement(format!(
        "SELECT {DELIVERY_COLUMNS}, first_started_at_ms, first_duration_ms, first_response FROM {} WHERE id = ",
        target.table(DELIVERIES)
    ));
    stmt.bind(id);
    let Some(mut row) = read::fetch(target, &stmt).await?.into_iter().next() else {
        return Ok(None);
    };
    let inline = row.split_off(row.len().saturating_sub(3));
    let row = delivery_row(row)?;
    let first = inline_attempt(inline, &row);
    let mut stmt = target.statement(format!(
        "SELECT {} FROM {} WHERE delivery_id = ",
        attempt_columns(target),
        target.table(ATTEMPTS)
    ));
    stmt.bind(id).push(" ORDER BY id");
    let attempts = first
        .map(Ok)
        .into_iter()
        .chain(
            read::fetch(target, &stmt)
                .await?
                .into_iter()
                .map(attempt_row),
        )
        .collect::<Result<_, _>>()?;
    Ok(Some((row, attempts)))
}

/// Sends the dead letters of `endpoint` created from `created_from_ms` to `created_to_ms`
/// (both included) again, from their first attempt, as of `now_ms`; returns how many. They
/// are keyed by user (`ordering_key`), which a per_user endpoint orders by.
pub async fn requeue_dead(
    target: &SqlTarget,
    endpoint: &str,
    created_from_ms: i64,
    created_to_ms: i64,
    now_ms: i64,
) -> Result<u64, SqlError> {
    let mut stmt = target.statement(format!(
        "UPDATE {} SET state = 'pending', attempts = 0, next_attempt_at_ms = ",
        target.table(DELIVERIES)
    ));
    stmt.bind(now_ms)
        .push(
            ", finished_at_ms = NULL, last_error = NULL, lease_until_ms = NULL, lease_token = NULL, \
             ordering_key = user_id WHERE endpoint = ",
        )
        .bind(endpoint)
        .push(&state_terms(DeliveryState::Dead))
        .push(" AND created_at_ms >= ")
        .bind(created_from_ms)
        .push(" AND created_at_ms <= ")
        .bind(created_to_ms);
    let done = target.pool().execute(stmt.query()).await?;
    Ok(done.rows_affected())
}

/// Sets `endpoint`'s state as of `now_ms`, creating its row if needed, in one transaction:
/// - `Enabled` (an operator, or a probe answered 2xx): reason, failing_since and the next
///   probe cleared, and every pending delivery due at once (`next_attempt_at_ms = 0`), so the
///   backlog drains in arrival order. Enabling an endpoint that is enabled changes nothing
///   (its deliveries keep their retry schedule); `reason` is not used.
/// - `Disabled` (the dispatcher: failing for too long, 410 Gone): failing_since kept (else
///   now), a probe due now unless one is scheduled.
/// - `Paused` (an operator): not probed (`next_probe_at_ms` cleared).
///
/// `changed_at_ms` moves only when the state changes.
pub async fn set_state(
    target: &SqlTarget,
    endpoint: &str,
    state: EndpointState,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<(), SqlError> {
    let endpoints = target.table(ENDPOINTS);
    let mut tx = target.pool().begin().await?;
    // the row, created enabled if missing, locked (a no-op update) before anything is read:
    // concurrent transitions of one endpoint take turns; on SQLite this takes the write lock
    let mut lock = target.statement(format!(
        "INSERT INTO {endpoints} (name, state, changed_at_ms) VALUES ("
    ));
    lock.bind(endpoint)
        .push(", 'enabled', ")
        .bind(now_ms)
        .push(")")
        .push(&target.dialect().on_conflict_update(&["name"], &["name"]));
    tx.execute(lock.query()).await?;
    // `changed_at_ms` first: MySQL evaluates SET left to right, with the new values
    let mut update = target.statement(format!(
        "UPDATE {endpoints} SET changed_at_ms = CASE WHEN state = '{0}' THEN changed_at_ms ELSE ",
        state.as_str()
    ));
    update.bind(now_ms).push(" END, ");
    match state {
        EndpointState::Enabled => {
            let mut release = target.statement(format!(
                "UPDATE {} SET next_attempt_at_ms = 0 WHERE endpoint = ",
                target.table(DELIVERIES)
            ));
            release
                .bind(endpoint)
                .push(&format!(
                    " AND state = 'pending' AND EXISTS (SELECT 1 FROM {endpoints} WHERE name = "
                ))
                .bind(endpoint)
                .push(" AND state <> 'enabled')");
            tx.execute(release.query()).await?;
            update.push(
                "reason = NULL, failing_since_ms = NULL, next_probe_at_ms = NULL, state = 'enabled'",
            );
        }
        EndpointState::Disabled => {
            update
                .push("reason = ")
                .bind(reason)
                .push(", failing_since_ms = COALESCE(failing_since_ms, ")
                .bind(now_ms)
                .push("), next_probe_at_ms = COALESCE(next_probe_at_ms, ")
                .bind(now_ms)
                .push("), state = 'disabled'");
        }
        EndpointState::Paused => {
            update
                .push("reason = ")
                .bind(reason)
                .push(", next_probe_at_ms = NULL, state = 'paused'");
        }
    }
    update.push(" WHERE name = ").bind(endpoint);
    if state == EndpointState::Enabled {
        update.push(" AND state <> 'enabled'");
    }
    tx.execute(update.query()).await?;
    tx.commit().await?;
    Ok(())
}
