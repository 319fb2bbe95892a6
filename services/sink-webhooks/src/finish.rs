//! The end of attempts in SQL: every attempt recorded, each delivery moved on (delivered,
//! due again, dead), fenced by its lease token; set-wise on Postgres.

use sqlx::Executor;
use terra_schema::positions::Tx;
use terra_schema::tables::{WEBHOOK_ATTEMPTS, WEBHOOK_DELIVERIES};
use terra_schema::{Dialect, SqlError, SqlTarget, Stmt, Val, insert_all};

use crate::send::AttemptResult;
use crate::store::Leased;

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Pending again, due at this time.
    Retry {
        at_ms: i64,
    },
    /// Dead-lettered with the reason.
    Dead {
        reason: String,
    },
    /// A failed probe: the delivery stays as it was (its schedule untouched).
    Unchanged,
}

/// One finished attempt, to record.
#[derive(Debug, Clone)]
pub struct Finished {
    pub delivery_id: i64,
    /// The delivery's event (its body goes once nothing will send it again).
    pub envelope_id: String,
    pub token: String,
    pub attempt: u32,
    pub probe: bool,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    pub status: Option<u16>,
    pub error_class: &'static str,
    pub error: Option<String>,
    pub response: Option<String>,
    pub next: Next,
}

impl Finished {
    /// The end of `delivery`'s attempt that gave `result`.
    pub fn of(delivery: &Leased, probe: bool, result: &AttemptResult, next: Next) -> Self {
        Self {
            delivery_id: delivery.id,
            envelope_id: delivery.envelope_id.clone(),
            token: delivery.token.clone(),
            attempt: delivery.attempts,
            probe,
            started_at_ms: result.started_at_ms,
            duration_ms: result.duration.as_millis() as i64,
            status: result.status,
            error_class: result.class.as_str(),
            error: result.error.clone(),
            response: result.response.clone(),
            next,
        }
    }
}

/// Inserts attempt rows ([`attempt_row`]).
pub(crate) async fn insert_attempts(
    target: &SqlTarget,
    tx: &mut Tx,
    rows: Vec<Vec<Val>>,
) -> Result<(), SqlError> {
    for stmt in insert_all(
        target.dialect(),
        &target.table(WEBHOOK_ATTEMPTS),
        &ATTEMPT_COLUMNS,
        rows,
        "",
    ) {
        tx.execute(stmt.query()).await?;
    }
    Ok(())
}

/// An attempt's row (columns [`ATTEMPT_COLUMNS`]).
pub(crate) fn attempt_row(f: &Finished) -> Vec<Val> {
    vec![
        Val::from(f.delivery_id),
        Val::from(i64::from(f.attempt)),
        Val::from(i64::from(f.probe)),
        Val::from(f.started_at_ms),
        Val::from(f.duration_ms),
        Val::from(f.status.map(i64::from)),
        Val::from(f.error_class),
        Val::from(f.error.clone()),
        Val::from(f.response.clone()),
    ]
}

/// Records finished attempts and moves their deliveries on, in one transaction. A delivery
/// whose lease another worker took since (`token` no longer its) keeps its state; the attempt
/// is recorded all the same. Returns how many deliveries moved.
pub async fn finish(
    target: &SqlTarget,
    finished: &[Finished],
    now_ms: i64,
) -> Result<usize, SqlError> {
    if finished.is_empty() {
        return Ok(0);
    }
    let dialect = target.dialect();
    let d = target.table(WEBHOOK_DELIVERIES);
    let mut tx = target.pool().begin().await?;
    insert_attempts(target, &mut tx, finished.iter().map(attempt_row).collect()).await?;
    let mut moved = 0;
    // Postgres: the deliveries delivered (the common case) and those due again (a failing
    // endpoint's) in set-wise UPDATEs, the rest one by one
    let (set_wise, rest): (Vec<&Finished>, Vec<&Finished>) = finished.iter().partition(|f| {
        dialect == Dialect::Postgres && matches!(f.next, Next::Delivered | Next::Retry { .. })
    });
    let (delivered, retry): (Vec<&Finished>, Vec<&Finished>) = set_wise
        .into_iter()
        .partition(|f| f.next == Next::Delivered);
    let retry: Vec<(&Finished, i64)> = retry
        .into_iter()
        .filter_map(|f| match f.next {
            Next::Retry { at_ms } => Some((f, at_ms)),
            _ => None,
        })
        .collect();
    for chunk in delivered.chunks(FINISH_CHUNK) {
        let mut stmt = Stmt::new(
            dialect,
            format!(
                "UPDATE {d} SET lease_until_ms = NULL, lease_token = NULL, last_status = v.status, state = 'delivered', last_error = NULL, finished_at_ms = "
            ),
        );
        stmt.bind(now_ms).push(" FROM (VALUES ");
        for (i, f) in chunk.iter().enumerate() {
            stmt.push(if i == 0 { "(" } else { ", (" });
            push_fence(&mut stmt, f);
            stmt.push(")");
        }
        stmt.push(&format!(
            ") AS v(id, token, status) WHERE {d}.id = v.id AND {d}.state = 'pending' AND {d}.lease_token = v.token"
        ));
        moved += tx.execute(stmt.query()).await?.rows_affected() as usize;
    }
    for chunk in retry.chunks(FINISH_CHUNK) {
        let mut stmt = Stmt::new(
            dialect,
            format!(
                "UPDATE {d} SET lease_until_ms = NULL, lease_token = NULL, last_status = v.status, next_attempt_at_ms = v.at, last_error = v.error FROM (VALUES "
            ),
        );
        for (i, (f, at_ms)) in chunk.iter().enumerate() {
            stmt.push(if i == 0 { "(" } else { ", (" });
            push_fence(&mut stmt, f);
            stmt.push(", ")
                .bind_cast(*at_ms, Some("BIGINT"))
                .push(", ")
                .bind_cast(f.error.clone(), Some("TEXT"))
                .push(")");
        }
        stmt.push(&format!(
            ") AS v(id, token, status, at, error) WHERE {d}.id = v.id AND {d}.state = 'pending' AND {d}.lease_token = v.token"
        ));
        moved += tx.execute(stmt.query()).await?.rows_affected() as usize;
    }
    for f in rest {
        let mut stmt = Stmt::new(
            dialect,
            format!("UPDATE {d} SET lease_until_ms = NULL, lease_token = NULL, last_status = "),
        );
        stmt.bind(f.status.map(i64::from));
        match &f.next {
            Next::Delivered => {
                stmt.push(", state = 'delivered', last_error = NULL, finished_at_ms = ")
                    .bind(now_ms);
            }
            Next::Retry { at_ms } => {
                stmt.push(", next_attempt_at_ms = ")
                    .bind(*at_ms)
                    .push(", last_error = ")
                    .bind(f.error.clone());
            }
            Next::Dead { reason } => {
                stmt.push(", state = 'dead', last_error = ")
                    .bind(reason.as_str())
                    .push(", finished_at_ms = ")
                    .bind(now_ms);
            }
            Next::Unchanged => {
                stmt.push(", last_error = ").bind(f.error.clone());
            }
        }
        stmt.push(" WHERE id = ")
            .bind(f.delivery_id)
            .push(" AND state = 'pending' AND lease_token = ")
            .bind(f.token.as_str());
        moved += tx.execute(stmt.query()).await?.rows_affected() as usize;
    }
    // the bodies of events now delivered everywhere (a probe's success delivers too)
    let delivered_events: Vec<String> = finished
        .iter()
        .filter(|f| f.next == Next::Delivered)
        .map(|f| f.envelope_id.clone())
        .collect();
    if !delivered_events.is_empty() {
        crate::prune::release_bodies(target, &mut tx, &delivered_events).await?;
    }
    tx.commit().await?;
    Ok(moved)
}

/// `id, token, status` of a set-wise UPDATE's row, typed (a VALUES list has no types).
fn push_fence(stmt: &mut Stmt, f: &Finished) {
    stmt.bind_cast(f.delivery_id, Some("BIGINT"))
        .push(", ")
        .bind_cast(f.token.as_str(), Some("TEXT"))
        .push(", ")
        .bind_cast(f.status.map(i64::from), Some("INTEGER"));
}

/// Most deliveries per set-wise UPDATE of [`finish`] (5 parameters each at most).
const FINISH_CHUNK: usize = 1_000;

const ATTEMPT_COLUMNS: [&str; 9] = [
    "delivery_id",
    "attempt",
    "probe",
    "started_at_ms",
    "duration_ms",
    "status_code",
    "error_class",
    "error",
    "response",
];
