//! A chunk's rows: its events still to send, its deliveries and its first attempts.

use sqlx::Executor;
use terra_schema::tables::WEBHOOK_EVENTS;
use terra_schema::{SqlTarget, Val, insert_rows};
use tokio::sync::oneshot;

use super::sql::{
    EVENT_COLUMNS, STATEMENT_BYTES, by_bytes, delivered_at_once, delivery_row, event_row,
    insert_deliveries,
};
use super::{FanOut, FanOutError, Sent};
use crate::dispatch::now_ms;
use crate::endpoint::{Endpoint, WebhookSettings};
use crate::finish::{attempt_row, insert_attempts};
use crate::first::{First, health};
use crate::store::{Finished, Leased};

/// What a chunk wrote, and the attempts in flight to tell their deliveries' ids.
pub(super) struct Written {
    pub(super) out: FanOut,
    pub(super) told: Vec<(oneshot::Sender<i64>, i64)>,
}

impl FanOut {
    /// Adds a chunk's counts; returns its attempts in flight.
    pub(super) fn add(&mut self, written: Written) -> Vec<(oneshot::Sender<i64>, i64)> {
        let chunk = written.out;
        for (endpoint, n) in chunk.deliveries {
            *self.deliveries.entry(endpoint).or_default() += n;
        }
        self.events.extend(chunk.events);
        for endpoint in chunk.pending {
            if !self.pending.contains(&endpoint) {
                self.pending.push(endpoint);
            }
        }
        for (endpoint, (delivered, gone)) in chunk.first {
            match self.first.iter_mut().find(|(e, _)| *e == endpoint) {
                Some((_, h)) => *h = (h.0 || delivered, h.1 || gone),
                None => self.first.push((endpoint, (delivered, gone))),
            }
        }
        written.told
    }
}

/// Writes a chunk's events (those still to send), deliveries and first attempts in `tx`; the
/// events in the transaction of `events_tx` instead when given (begun here if it is not yet),
/// at the same time (see [`super::fan_out`]).
pub(super) async fn write_chunk(
    target: &SqlTarget,
    tx: &mut terra_schema::positions::Tx,
    events_tx: Option<&mut Option<terra_schema::positions::Tx>>,
    settings: &WebhookSettings,
    sent: Sent,
) -> Result<Written, FanOutError> {
    let Sent { p, firsts } = sent;
    let now = now_ms();
    let mut out = FanOut::default();
    let mut keep = vec![false; p.events.len()];
    let mut rows = Vec::with_capacity(p.pairs.len());
    for (&(event, endpoint), first) in p.pairs.iter().zip(&firsts) {
        let Endpoint { name, ordering, .. } = &settings.endpoints[endpoint];
        keep[event] |= !delivered_at_once(first);
        rows.push(delivery_row(
            (name, *ordering),
            &p.events[event],
            first,
            now,
        ));
        *out.deliveries.entry(name.clone()).or_default() += 1;
        if matches!(first, First::NotSent | First::InFlight { .. }) && !out.pending.contains(name) {
            out.pending.push(name.clone());
        }
    }
    let events: Vec<Vec<Val>> = (0..p.events.len())
        .filter(|&i| keep[i])
        .map(|i| event_row(&p.events[i], p.at[i]))
        .collect();
    let (events_written, written) = match events_tx.filter(|_| !events.is_empty()) {
        Some(slot) => {
            let events_tx = match slot {
                Some(events_tx) => events_tx,
                None => slot.insert(target.pool().begin().await?),
            };
            tokio::join!(
                write_events(target, events_tx, events),
                write_deliveries(target, tx, settings, (p, firsts), (rows, keep), out)
            )
        }
        None => (
            write_events(target, tx, events).await,
            write_deliveries(target, tx, settings, (p, firsts), (rows, keep), out).await,
        ),
    };
    events_written?;
    written
}

/// Events still to send, with their bodies (an event already there is left as it is).
async fn write_events(
    target: &SqlTarget,
    tx: &mut terra_schema::positions::Tx,
    events: Vec<Vec<Val>>,
) -> Result<(), FanOutError> {
    let dialect = target.dialect();
    for chunk in by_bytes(events, 11, STATEMENT_BYTES) {
        for stmt in insert_rows(
            dialect,
            &target.table(WEBHOOK_EVENTS),
            &EVENT_COLUMNS,
            &[],
            chunk,
            &dialect.on_conflict_ignore(&["envelope_id"]),
        ) {
            tx.execute(stmt.query()).await?;
        }
    }
    Ok(())
}

/// A chunk's deliveries (`rows`) and first attempts; `keep`: the events still to send.
async fn write_deliveries(
    target: &SqlTarget,
    tx: &mut terra_schema::positions::Tx,
    settings: &WebhookSettings,
    (p, firsts): (super::pairs::Pairs, Vec<First>),
    (rows, keep): (Vec<Vec<Val>>, Vec<bool>),
    mut out: FanOut,
) -> Result<Written, FanOutError> {
    // the ids of the deliveries whose attempt goes in webhook_attempts (done and not kept in
    // the row, or in flight)
    let sent: Vec<String> = p
        .pairs
        .iter()
        .zip(&firsts)
        .filter(|(_, f)| !matches!(f, First::NotSent) && !delivered_at_once(f))
        .map(|(&(event, _), _)| p.events[event].envelope_id.clone())
        .collect();
    let ids = insert_deliveries(target, tx, rows, (!sent.is_empty()).then_some(sent)).await?;
    let id_of = |event: usize, endpoint: usize| {
        let key = (
            p.events[event].envelope_id.clone(),
            settings.endpoints[endpoint].name.clone(),
        );
        ids.get(&key).copied()
    };
    out.first = health(&firsts, &p.pairs, settings.endpoints.len())
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| h.map(|h| (settings.endpoints[i].name.clone(), h)))
        .collect();
    let mut attempts = Vec::new();
    let mut told = Vec::new();
    for (&(event, endpoint), first) in p.pairs.iter().zip(firsts) {
        match first {
            First::Done { .. } if delivered_at_once(&first) => {}
            First::Done { result, next } => {
                let Some(id) = id_of(event, endpoint) else {
                    continue;
                };
                let delivery = Leased {
                    id,
                    envelope_id: String::new(),
                    attempts: 1,
                    token: String::new(),
                    lease_until_ms: 0,
                };
                attempts.push(attempt_row(&Finished::of(&delivery, false, &result, next)));
            }
            First::InFlight { id: tell, .. } => {
                if let Some(id) = id_of(event, endpoint) {
                    told.push((tell, id));
                }
            }
            First::NotSent => {}
        }
    }
    insert_attempts(target, tx, attempts).await?;
    out.events = (0..p.events.len())
        .filter(|&i| keep[i])
        .map(|i| (*p.events[i]).clone())
        .collect();
    Ok(Written { out, told })
}
