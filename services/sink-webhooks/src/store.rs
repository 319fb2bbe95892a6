//! The SQL of the fan-out and the dispatcher: deliveries created with the log positions,
//! leased when due, finished with their attempt.
//!
//! Leases: a worker takes due rows by setting `lease_until_ms` ahead and a `lease_token` of
//! its own (Postgres and MySQL with `FOR UPDATE SKIP LOCKED`, so replicas never take the same
//! row; SQLite has one writer). A worker that dies leaves its lease to run out, and the row is
//! due again: every pending row has a next attempt. A worker that finishes after its lease ran
//! out is fenced by the token: its attempt is recorded, the row is not touched.

use std::collections::BTreeMap;

use bytes::Bytes;
use sqlx::{Executor, Row};
use terra_projector::plan::Planned;
use terra_schema::tables::{WEBHOOK_DELIVERIES, WEBHOOK_EVENTS};
use terra_schema::{Dialect, SqlError, SqlTarget, Stmt};

use crate::endpoint::Ordering;
pub use crate::finish::{Finished, Next, finish};

/// An event as the dispatcher sends it.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub envelope_id: String,
    pub source: String,
    pub event_type: String,
    pub user_id: Option<String>,
    pub terra_reference: Option<String>,
    pub terra_trace_id: Option<String>,
    pub ordering_timestamp_ms: Option<i64>,
    pub traceparent: Option<String>,
    pub body: Bytes,
}

impl EventRow {
    pub fn of_planned(planned: &Planned) -> Self {
        let origin = &planned.origin;
        Self {
            envelope_id: planned.envelope_id.clone(),
            source: origin.source.clone(),
            event_type: planned.event_type.clone(),
            user_id: origin.user_id.clone(),
            terra_reference: origin.terra_reference.clone(),
            terra_trace_id: origin.terra_trace_id.clone(),
            ordering_timestamp_ms: origin.ordering_timestamp_ms,
            traceparent: origin.traceparent.clone(),
            body: planned.body.clone(),
        }
    }
}

/// The key `per_user` orders by: the user id, or `sha256:<hex>` of one longer than the
/// column (200 bytes).
pub fn ordering_key(user_id: &str) -> String {
    if user_id.len() <= 200 {
        return user_id.to_owned();
    }
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(user_id.as_bytes()))
    )
}

/// A delivery a worker holds.
#[derive(Debug, Clone)]
pub struct Leased {
    pub id: i64,
    pub envelope_id: String,
    /// Attempts started, this one included (probes do not count).
    pub attempts: u32,
    /// The lease's token (fences the result if the lease ran out meanwhile).
    pub token: String,
    /// When the lease runs out.
    pub lease_until_ms: i64,
}

/// What to lease.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    pub endpoint: &'a str,
    pub ordering: Ordering,
    pub limit: usize,
    pub now_ms: i64,
    pub lease_until_ms: i64,
    pub token: &'a str,
    /// A probe of a disabled endpoint: the oldest pending delivery whether due or not, and the
    /// attempt does not count.
    pub probe: bool,
}

/// Leases up to `limit` due deliveries of an endpoint, oldest due first (`per_user`: only a
/// user's oldest pending one).
pub async fn lease(target: &SqlTarget, req: &LeaseRequest<'_>) -> Result<Vec<Leased>, SqlError> {
    let d = target.table(WEBHOOK_DELIVERIES);
    let dialect = target.dialect();
    let increment = if req.probe { 0 } else { 1 };
    match dialect {
        Dialect::Postgres | Dialect::Sqlite => {
            let mut stmt = Stmt::new(
                dialect,
                format!("UPDATE {d} SET attempts = attempts + {increment}, lease_until_ms = "),
            );
            stmt.bind(req.lease_until_ms)
                .push(", lease_token = ")
                .bind(req.token)
                .push(" WHERE id IN (");
            push_pick(&mut stmt, (&d, dialect), req);
            if dialect == Dialect::Postgres {
                stmt.push(" FOR UPDATE SKIP LOCKED");
            }
            stmt.push(") RETURNING id, envelope_id, attempts, next_attempt_at_ms");
            let rows = target.pool().fetch_all(stmt.query()).await?;
            in_lease_order(&rows, req)
        }
        Dialect::MySql => {
            let mut pick = Stmt::new(dialect, "");
            push_pick(&mut pick, (&d, dialect), req);
            pick.push(" FOR UPDATE SKIP LOCKED");
            let mut tx = target.pool().begin().await?;
            let ids: Vec<i64> = tx
                .fetch_all(pick.query())
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                tx.rollback().await?;
                return Ok(Vec::new());
            }
            let mut stmt = Stmt::new(
                dialect,
                format!("UPDATE {d} SET attempts = attempts + {increment}, lease_until_ms = "),
            );
            stmt.bind(req.lease_until_ms)
                .push(", lease_token = ")
                .bind(req.token)
                .push(" WHERE id IN ")
                .bind_list(ids.iter().copied());
            tx.execute(stmt.query()).await?;
            let mut read = Stmt::new(
                dialect,
                format!(
                    "SELECT id, envelope_id, attempts, next_attempt_at_ms FROM {d} WHERE id IN "
                ),
            );
            read.bind_list(ids.iter().copied());
            let rows = tx.fetch_all(read.query()).await?;
            tx.commit().await?;
            in_lease_order(&rows, req)
        }
    }
}

/// Hands leased deliveries (leased to be sent, not probes) back: their leases cleared and
/// the attempt each lease counted taken back, so they are due again at once, as if never
/// leased. A delivery whose lease another worker took since (its token changed) is left alone.
pub async fn release(target: &SqlTarget, leased: &[Leased]) -> Result<(), SqlError> {
    let d = target.table(WEBHOOK_DELIVERIES);
    let mut by_token: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for l in leased {
        by_token.entry(&l.token).or_default().push(l.id);
    }
    let mut tx = target.pool().begin().await?;
    for (token, ids) in by_token {
        let mut stmt = Stmt::new(
            target.dialect(),
            format!(
                "UPDATE {d} SET attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, lease_until_ms = NULL, lease_token = NULL WHERE state = 'pending' AND lease_token = "
            ),
        );
        stmt.bind(token)
            .push(" AND id IN ")
            .bind_list(ids.iter().copied());
        tx.execute(stmt.query()).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `SELECT c.id FROM deliveries c WHERE …` of [`lease`]: the endpoint's pending rows not
/// leased, due (unless probing), a user's oldest first with `per_user`. The user is
/// `ordering_key`, which only per_user endpoints' rows carry and only their pending rows are
/// indexed by (a partial index); on MySQL, which has no partial indexes, `user_id`, whose
/// index covers every row (the same rows for a per_user endpoint, and also any it queued
/// while it was unordered).
fn push_pick(stmt: &mut Stmt, (d, dialect): (&str, Dialect), req: &LeaseRequest<'_>) {
    stmt.push(&format!("SELECT c.id FROM {d} c WHERE c.endpoint = "))
        .bind(req.endpoint)
        .push(" AND c.state = 'pending' AND (c.lease_until_ms IS NULL OR c.lease_until_ms < ")
        .bind(req.now_ms)
        .push(")");
    if !req.probe {
        stmt.push(" AND c.next_attempt_at_ms <= ").bind(req.now_ms);
    }
    if req.ordering == Ordering::PerUser {
        let key = match dialect {
            Dialect::MySql => "user_id",
            Dialect::Postgres | Dialect::Sqlite => "ordering_key",
        };
        stmt.push(&format!(
            " AND NOT EXISTS (SELECT 1 FROM {d} p WHERE p.endpoint = c.endpoint AND p.{key} = c.{key} AND p.state = 'pending' AND p.{key} IS NOT NULL AND p.id < c.id)"
        ));
    }
    let order = if req.probe {
        " ORDER BY c.id"
    } else {
        " ORDER BY c.next_attempt_at_ms, c.id"
    };
    stmt.push(&format!("{order} LIMIT {}", req.limit.max(1)));
}

/// A text column: MySQL reports text with a binary collation as a blob to the `Any` driver.
pub fn text(row: &sqlx::any::AnyRow, i: usize) -> Result<Option<String>, SqlError> {
    match row.try_get::<Option<String>, _>(i) {
        Ok(text) => Ok(text),
        Err(_) => Ok(row
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())),
    }
}

/// The leased rows in the order they were picked in (`RETURNING` keeps none): by when they
/// were due, then by id (a probe: by id).
fn in_lease_order(
    rows: &[sqlx::any::AnyRow],
    req: &LeaseRequest<'_>,
) -> Result<Vec<Leased>, SqlError> {
    let mut leased = rows
        .iter()
        .map(|r| {
            Ok((
                if req.probe {
                    0
                } else {
                    r.try_get::<i64, _>(3)?
                },
                leased_of(r, req)?,
            ))
        })
        .collect::<Result<Vec<_>, SqlError>>()?;
    leased.sort_by_key(|(due, l)| (*due, l.id));
    Ok(leased.into_iter().map(|(_, l)| l).collect())
}

fn leased_of(row: &sqlx::any::AnyRow, req: &LeaseRequest<'_>) -> Result<Leased, SqlError> {
    Ok(Leased {
        token: req.token.to_owned(),
        lease_until_ms: req.lease_until_ms,
        id: row.try_get(0)?,
        envelope_id: text(row, 1)?.unwrap_or_default(),
        attempts: row
            .try_get::<i32, _>(2)
            .map(|n| n.max(0) as u32)
            .or_else(|_| row.try_get::<i64, _>(2).map(|n| n.max(0) as u32))?,
    })
}

/// An event read back: the event, or why it cannot be sent (its stored body does not decode,
/// or it is missing): its delivery is then dead-lettered with that reason.
pub type Readable = Result<EventRow, String>;

/// The events of `ids` (envelope ids), as stored, each by its envelope id.
pub async fn events(target: &SqlTarget, ids: &[&str]) -> Result<Vec<(String, Readable)>, SqlError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut stmt = Stmt::new(
        target.dialect(),
        format!(
            "SELECT envelope_id, source, event_type, user_id, terra_reference, terra_trace_id, ordering_timestamp_ms, traceparent, body, body_encoding FROM {} WHERE envelope_id IN ",
            target.table(WEBHOOK_EVENTS)
        ),
    );
    stmt.bind_list(ids.iter().copied());
    let rows = target.pool().fetch_all(stmt.query()).await?;
    rows.iter()
        .map(|row| {
            let envelope_id = text(row, 0)?.unwrap_or_default();
            let body = match crate::body::decode(
                row.try_get::<Vec<u8>, _>(8)?,
                text(row, 9)?.as_deref(),
            ) {
                Ok(body) => Bytes::from(body),
                Err(why) => {
                    let why = format!("the stored body of this event cannot be read: {why}");
                    return Ok((envelope_id, Err(why)));
                }
            };
            let event = EventRow {
                envelope_id: envelope_id.clone(),
                source: text(row, 1)?.unwrap_or_default(),
                event_type: text(row, 2)?.unwrap_or_default(),
                user_id: text(row, 3)?,
                terra_reference: text(row, 4)?,
                terra_trace_id: text(row, 5)?,
                ordering_timestamp_ms: row.try_get(6)?,
                traceparent: text(row, 7)?,
                body,
            };
            Ok((envelope_id, Ok(event)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_user_ids_are_ordered_by_their_hash() {
        assert_eq!(ordering_key("u-1"), "u-1");
        let long = "x".repeat(201);
        let key = ordering_key(&long);
        assert!(key.starts_with("sha256:") && key.len() == 71, "{key}");
        assert_ne!(key, ordering_key(&"x".repeat(202)));
    }
}
