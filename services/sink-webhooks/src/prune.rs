//! Pruning: what nothing will send again is not kept.
//!
//! - An event's body (`webhook_events`) goes once none of its deliveries is pending or dead
//!   and the fan-out's positions have passed it (a batch in progress commits its events
//!   before its deliveries): at once when the dispatcher's result writer delivers its last one
//!   ([`release_bodies`], in the same transaction), and by the sweep ([`prune`]) for what
//!   that missed (two replicas finishing an event's last two deliveries at once each see the
//!   other's still pending). The sweep reads every kept event once, at start-up (bodies kept
//!   by an earlier version, which kept them all); after that only the events of deliveries
//!   finished since one interval before the previous sweep began (two intervals back:
//!   replicas' clocks may differ), so a large backlog of pending events is not read again
//!   every hour.
//! - Delivered and dead deliveries, with their attempts, go once they finished longer ago
//!   than `retention` (`[webhooks] retention`, 30 days; `0s` keeps them). A dead letter can be
//!   re-queued until then. A pending delivery is never pruned, however old.
//!
//! Every statement re-checks its condition on the rows it deletes, so a delivery re-queued
//! between the sweep's read and its delete stays, with its body and its attempts.

use std::time::Duration;

use sqlx::{Executor, Row};
use terra_schema::positions::Tx;
use terra_schema::tables::{
    WEBHOOK_ATTEMPTS, WEBHOOK_DELIVERIES, WEBHOOK_EVENTS, WEBHOOK_POSITIONS,
};
use terra_schema::{SqlError, SqlTarget};

use terra_runtime::CancellationToken;

use crate::dispatch::now_ms;
use crate::endpoint::WebhookSettings;
use crate::metrics::WebhookMetrics;
use crate::store::text;

/// Most rows one statement of the sweep deletes (short transactions: the fan-out and the
/// writer wait for no long delete).
pub const PRUNE_CHUNK: usize = 1_000;

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub deliveries: u64,
    pub attempts: u64,
    pub events: u64,
}

/// Sweeps every `prune_interval` (the first at once) until `stop`. A failed sweep (the
/// database away) is logged and tried again at the next one: nothing depends on it.
pub(crate) async fn run(
    target: SqlTarget,
    settings: std::sync::Arc<WebhookSettings>,
    metrics: WebhookMetrics,
    stop: CancellationToken,
) {
    // the first sweep reads every kept event; the next ones, the events of deliveries
    // finished since one interval before the previous sweep started
    let mut since: Option<i64> = None;
    while !stop.is_cancelled() {
        let started = now_ms();
        match prune(&target, settings.retention, started, since).await {
            Ok(pruned) => {
                since = Some(started.saturating_sub(settings.prune_interval.as_millis() as i64));
                metrics.pruned(&pruned);
                if pruned != Pruned::default() {
                    tracing::info!(
                        deliveries = pruned.deliveries,
                        attempts = pruned.attempts,
                        events = pruned.events,
                        "webhook history pruned"
                    );
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot prune webhook history"),
        }
        tokio::select! {
            () = tokio::time::sleep(settings.prune_interval) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// One sweep: finished deliveries older than `retention` (none when `None`) with their
/// attempts and then, of the events whose body no delivery needs any more, those of the
/// deliveries pruned, and every kept event (`since` is `None`) or those of the deliveries
/// delivered at or after `since` (ms).
pub async fn prune(
    target: &SqlTarget,
    retention: Option<Duration>,
    now_ms: i64,
    since: Option<i64>,
) -> Result<Pruned, SqlError> {
    // every endpoint that ever had a row, configured or not: the sweep reads per endpoint
    // (and state), so the `finished` index (endpoint, state, finished_at_ms) finds the rows
    let endpoints: Vec<String> = crate::endpoints_store::endpoint_rows(target)
        .await?
        .into_iter()
        .map(|row| row.name)
        .collect();
    let mut pruned = Pruned::default();
    if let Some(retention) = retention {
        let cutoff = now_ms.saturating_sub(retention.as_millis() as i64);
        for endpoint in &endpoints {
            for state in ["delivered", "dead"] {
                prune_finished(target, endpoint, state, cutoff, &mut pruned).await?;
            }
        }
    }
    match since {
        Some(since) => {
            for endpoint in &endpoints {
                pruned.events += release_delivered_since(target, endpoint, since).await?;
            }
        }
        None => pruned.events += release_every_kept(target).await?,
    }
    Ok(pruned)
}

/// Deletes `endpoint`'s deliveries in `state` finished before `cutoff_ms`, their attempts,
/// and the bodies none of their events' deliveries needs any more (a dead letter's event
/// kept its body for a re-queue).
async fn prune_finished(
    target: &SqlTarget,
    endpoint: &str,
    state: &str,
    cutoff_ms: i64,
    pruned: &mut Pruned,
) -> Result<(), SqlError> {
    loop {
        let rows = finished_before(target, endpoint, state, cutoff_ms).await?;
        let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        let (deliveries, attempts) = delete_deliveries(target, &ids, state, cutoff_ms).await?;
        pruned.deliveries += deliveries;
        pruned.attempts += attempts;
        let events: Vec<String> = rows.into_iter().map(|(_, e)| e).collect();
        pruned.events += release_in_own_transaction(target, &events).await?;
        if ids.len() < PRUNE_CHUNK {
            return Ok(());
        }
    }
}

/// Releases the bodies of the events of `endpoint`'s deliveries delivered at or after
/// `since_ms`, in keyset pages on (finish time, id): a batch's deliveries share a finish
/// time. Returns how many went.
async fn release_delivered_since(
    target: &SqlTarget,
    endpoint: &str,
    since_ms: i64,
) -> Result<u64, SqlError> {
    let mut released = 0;
    let mut after = (since_ms, i64::MIN);
    loop {
        let rows = delivered_after(target, endpoint, after).await?;
        let Some((at, id)) = rows.last().map(|(at, id, _)| (*at, *id)) else {
            return Ok(released);
        };
        let full = rows.len() == PRUNE_CHUNK;
        let events: Vec<String> = rows.into_iter().map(|(_, _, e)| e).collect();
        released += release_in_own_transaction(target, &events).await?;
        if !full {
            return Ok(released);
        }
        after = (at, id);
    }
}

/// Releases every kept body no delivery needs any more, in envelope id order (keyset pages:
/// each statement bounded). Returns how many went.
async fn release_every_kept(target: &SqlTarget) -> Result<u64, SqlError> {
    let events = target.table(WEBHOOK_EVENTS);
    let mut released = 0;
    let mut after = String::new();
    loop {
        let mut page = target.statement(format!(
            "SELECT envelope_id FROM {events} WHERE envelope_id > "
        ));
        page.bind(after.as_str())
            .push(&format!(" ORDER BY envelope_id LIMIT {PRUNE_CHUNK}"));
        let rows = target.pool().fetch_all(page.query()).await?;
        let ids = rows
            .iter()
            .map(|row| text(row, 0).map(Option::unwrap_or_default))
            .collect::<Result<Vec<String>, SqlError>>()?;
        let Some(last) = ids.last() else {
            return Ok(released);
        };
        after = last.clone();
        released += release_in_own_transaction(target, &ids).await?;
        if ids.len() < PRUNE_CHUNK {
            return Ok(released);
        }
    }
}

/// Deletes the bodies of these events that no delivery is pending or dead for (nothing will
/// send them again), among the events the fan-out has passed (before its stored position in
/// their partition): a batch in progress commits its events before its deliveries (see
/// `fanout::separate_events`), and those must stay. Returns how many went.
pub(crate) async fn release_bodies(
    target: &SqlTarget,
    tx: &mut Tx,
    envelope_ids: &[String],
) -> Result<u64, SqlError> {
    if envelope_ids.is_empty() {
        return Ok(0);
    }
    let events = target.table(WEBHOOK_EVENTS);
    let deliveries = target.table(WEBHOOK_DELIVERIES);
    // a plain read (no lock): on MySQL a subquery of a DELETE would take shared locks and
    // wait on the fan-out's positions lock; a position read before the fan-out moves it only
    // keeps more
    let passed = terra_schema::positions::read_in(target, tx, WEBHOOK_POSITIONS, false).await?;
    if passed.is_empty() {
        return Ok(0);
    }
    let passed = passed
        .iter()
        .map(|(partition, next)| format!("(log_partition = {partition} AND log_offset < {next})"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let mut released = 0;
    for chunk in envelope_ids.chunks(PRUNE_CHUNK) {
        let mut stmt = target.statement(format!("DELETE FROM {events} WHERE envelope_id IN "));
        stmt.bind_list(chunk.iter().map(String::as_str)).push(&format!(
            " AND NOT EXISTS (SELECT 1 FROM {deliveries} d WHERE d.envelope_id = {events}.envelope_id \
             AND d.state IN ('pending', 'dead')) AND ({passed})"
        ));
        released += tx.execute(stmt.query()).await?.rows_affected();
    }
    Ok(released)
}

/// [`release_bodies`] in a transaction of its own.
async fn release_in_own_transaction(
    target: &SqlTarget,
    envelope_ids: &[String],
) -> Result<u64, SqlError> {
    if envelope_ids.is_empty() {
        return Ok(0);
    }
    let mut tx = target.pool().begin().await?;
    let released = release_bodies(target, &mut tx, envelope_ids).await?;
    tx.commit().await?;
    Ok(released)
}

/// (finish time, id, event) of `endpoint`'s delivered deliveries after `(at, id)` in
/// (finish time, id) order (the first page: `(since, i64::MIN)`), one page.
async fn delivered_after(
    target: &SqlTarget,
    endpoint: &str,
    (at, id): (i64, i64),
) -> Result<Vec<(i64, i64, String)>, SqlError> {
    let mut stmt = target.statement(format!(
        "SELECT finished_at_ms, id, envelope_id FROM {} WHERE endpoint = ",
        target.table(WEBHOOK_DELIVERIES)
    ));
    stmt.bind(endpoint)
        .push(" AND state = 'delivered' AND finished_at_ms >= ")
        .bind(at)
        .push(" AND (finished_at_ms > ")
        .bind(at)
        .push(" OR id > ")
        .bind(id)
        .push(&format!(
            ") ORDER BY finished_at_ms, id LIMIT {PRUNE_CHUNK}"
        ));
    let rows = target.pool().fetch_all(stmt.query()).await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<i64, _>(0)?,
                row.try_get::<i64, _>(1)?,
                text(row, 2)?.unwrap_or_default(),
            ))
        })
        .collect()
}

/// (id, event) of `endpoint`'s deliveries in `state` that finished before `cutoff_ms`,
/// oldest first.
async fn finished_before(
    target: &SqlTarget,
    endpoint: &str,
    state: &str,
    cutoff_ms: i64,
) -> Result<Vec<(i64, String)>, SqlError> {
    let mut stmt = target.statement(format!(
        "SELECT id, envelope_id FROM {} WHERE endpoint = ",
        target.table(WEBHOOK_DELIVERIES)
    ));
    stmt.bind(endpoint)
        .push(" AND state = ")
        .bind(state)
        .push(" AND finished_at_ms < ")
        .bind(cutoff_ms)
        .push(&format!(" ORDER BY finished_at_ms LIMIT {PRUNE_CHUNK}"));
    let rows = target.pool().fetch_all(stmt.query()).await?;
    rows.iter()
        .map(|row| Ok((row.try_get::<i64, _>(0)?, text(row, 1)?.unwrap_or_default())))
        .collect()
}

/// Deletes these deliveries if they are still in `state` and finished before `cutoff_ms`,
/// and the attempts of those deleted, in one transaction. Returns (deliveries, attempts).
async fn delete_deliveries(
    target: &SqlTarget,
    ids: &[i64],
    state: &str,
    cutoff_ms: i64,
) -> Result<(u64, u64), SqlError> {
    if ids.is_empty() {
        return Ok((0, 0));
    }
    let deliveries = target.table(WEBHOOK_DELIVERIES);
    let attempts = target.table(WEBHOOK_ATTEMPTS);
    let mut tx = target.pool().begin().await?;
    let mut stmt = target.statement(format!("DELETE FROM {deliveries} WHERE id IN "));
    stmt.bind_list(ids.iter().copied())
        .push(" AND state = ")
        .bind(state)
        .push(" AND finished_at_ms < ")
        .bind(cutoff_ms);
    let deleted = tx.execute(stmt.query()).await?.rows_affected();
    // the attempts of the deliveries that are gone (a re-queued one keeps its history)
    let mut stmt = target.statement(format!("DELETE FROM {attempts} WHERE delivery_id IN "));
    stmt.bind_list(ids.iter().copied()).push(&format!(
        " AND NOT EXISTS (SELECT 1 FROM {deliveries} d WHERE d.id = {attempts}.delivery_id)"
    ));
    let attempts_deleted = tx.execute(stmt.query()).await?.rows_affected();
    tx.commit().await?;
    Ok((deleted, attempts_deleted))
}
