//! The SQL of the endpoints' state: their rows, health (failing streaks), probe times, and
//! the backlog per endpoint for the metrics.

use std::collections::BTreeMap;

use sqlx::{Executor, Row};
use terra_schema::tables::{WEBHOOK_DELIVERIES, WEBHOOK_ENDPOINTS};
use terra_schema::{SqlError, SqlTarget, Stmt, Val, insert_rows};

use crate::store::text;

/// An endpoint's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    pub name: String,
    pub state: String,
    pub failing_since_ms: Option<i64>,
    pub next_probe_at_ms: Option<i64>,
}

/// Makes sure each endpoint has a row (enabled when new).
pub async fn register_endpoints(
    target: &SqlTarget,
    names: &[&str],
    now_ms: i64,
) -> Result<(), SqlError> {
    let rows = names
        .iter()
        .map(|n| vec![Val::from(*n), Val::from("enabled"), Val::from(now_ms)])
        .collect();
    for stmt in insert_rows(
        target.dialect(),
        &target.table(WEBHOOK_ENDPOINTS),
        &["name", "state", "changed_at_ms"],
        &[],
        rows,
        &target.dialect().on_conflict_ignore(&["name"]),
    ) {
        target.pool().execute(stmt.query()).await?;
    }
    Ok(())
}

/// Keys the pending deliveries of endpoints that order per user (`ordered`) whose rows were
/// written while they did not (`ordering_key` NULL): the per_user check reads only keyed
/// rows, so a backlog queued unordered is then sent in order too.
pub async fn key_ordered(target: &SqlTarget, ordered: &[&str]) -> Result<u64, SqlError> {
    let mut keyed = 0;
    for endpoint in ordered {
        let mut stmt = Stmt::new(
            target.dialect(),
            format!(
                "UPDATE {} SET ordering_key = user_id WHERE endpoint = ",
                target.table(WEBHOOK_DELIVERIES)
            ),
        );
        stmt.bind(*endpoint)
            .push(" AND state = 'pending' AND ordering_key IS NULL AND user_id IS NOT NULL");
        keyed += target.pool().execute(stmt.query()).await?.rows_affected();
    }
    Ok(keyed)
}

/// Every endpoint's stored state.
pub async fn endpoint_rows(target: &SqlTarget) -> Result<Vec<EndpointRow>, SqlError> {
    let rows = target
        .pool()
        .fetch_all(
            format!(
                "SELECT name, state, failing_since_ms, next_probe_at_ms FROM {}",
                target.table(WEBHOOK_ENDPOINTS)
            )
            .as_str(),
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(EndpointRow {
                name: text(row, 0)?.unwrap_or_default(),
                state: text(row, 1)?.unwrap_or_default(),
                failing_since_ms: row.try_get(2)?,
                next_probe_at_ms: row.try_get(3)?,
            })
        })
        .collect()
}

/// After a batch of attempts to one endpoint: a success clears its failing streak; failures
/// start one (kept from the first).
pub async fn record_health(
    target: &SqlTarget,
    endpoint: &str,
    succeeded: bool,
    now_ms: i64,
) -> Result<(), SqlError> {
    let table = target.table(WEBHOOK_ENDPOINTS);
    let mut stmt = Stmt::new(target.dialect(), format!("UPDATE {table} SET "));
    if succeeded {
        stmt.push("failing_since_ms = NULL, last_success_ms = ")
            .bind(now_ms);
    } else {
        stmt.push("failing_since_ms = COALESCE(failing_since_ms, ")
            .bind(now_ms)
            .push(")");
    }
    stmt.push(" WHERE name = ").bind(endpoint);
    target.pool().execute(stmt.query()).await?;
    Ok(())
}

/// Sets when a disabled endpoint is probed next.
pub async fn set_next_probe(
    target: &SqlTarget,
    endpoint: &str,
    at_ms: i64,
) -> Result<(), SqlError> {
    let mut stmt = Stmt::new(
        target.dialect(),
        format!(
            "UPDATE {} SET next_probe_at_ms = ",
            target.table(WEBHOOK_ENDPOINTS)
        ),
    );
    stmt.bind(at_ms).push(" WHERE name = ").bind(endpoint);
    target.pool().execute(stmt.query()).await?;
    Ok(())
}

/// Per endpoint: pending deliveries due now, and the creation time of the oldest pending one.
pub async fn backlog(
    target: &SqlTarget,
    now_ms: i64,
) -> Result<BTreeMap<String, (i64, Option<i64>)>, SqlError> {
    let mut stmt = Stmt::new(
        target.dialect(),
        // COUNT, not SUM: MySQL's SUM is a DECIMAL, which the Any driver cannot decode (the
        // backlog metrics stayed 0 on MySQL/MariaDB)
        "SELECT endpoint, COUNT(CASE WHEN next_attempt_at_ms <= ".to_owned(),
    );
    stmt.bind(now_ms).push(&format!(
        " THEN 1 END), MIN(created_at_ms) FROM {} WHERE state = 'pending' GROUP BY endpoint",
        target.table(WEBHOOK_DELIVERIES)
    ));
    let rows = target.pool().fetch_all(stmt.query()).await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let name = text(&row, 0)?.unwrap_or_default();
        let due: i64 = row.try_get(1)?;
        let oldest: Option<i64> = row.try_get(2)?;
        out.insert(name, (due, oldest));
    }
    Ok(out)
}
