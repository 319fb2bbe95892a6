//! The fan-out as a projector [`Sink`] (group `webhooks`): each batch's deliveries (one per
//! matching endpoint) written with the batch's positions in one transaction, every
//! (event, endpoint) pair exactly once. Where the dispatcher runs in the same process, the
//! first attempts to quick endpoints are sent before that transaction and written with it
//! ([`crate::first`]); the other deliveries are written pending, and their endpoints woken.

use std::collections::BTreeMap;
use std::sync::Arc;

use terra_projector::plan::{PlanDepth, Planned};
use terra_projector::{Sink, SinkError, WriteStats};
use terra_schema::tables::WEBHOOK_POSITIONS;
use terra_schema::{Dialect, SqlError, SqlTarget, positions};
use tokio::sync::oneshot;

use crate::dispatch::{Shared, now_ms};
use crate::endpoint::WebhookSettings;
use crate::first::{First, Lane};
use crate::metrics::WebhookMetrics;
use crate::store::EventRow;

mod pairs;
mod sql;
mod write;
use pairs::{Pairs, chunks_of};
use write::{Written, write_chunk};

/// The longest the fan-out waits for the dispatcher of its process to start.
const LANE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The consumer group of the webhook destination.
pub const WEBHOOKS_GROUP: &str = "webhooks";

pub struct FanOutSink {
    target: SqlTarget,
    settings: Arc<WebhookSettings>,
    shared: Shared,
    metrics: WebhookMetrics,
}

impl FanOutSink {
    pub fn new(
        target: SqlTarget,
        settings: Arc<WebhookSettings>,
        shared: Shared,
        metrics: WebhookMetrics,
    ) -> Self {
        Self {
            target,
            settings,
            shared,
            metrics,
        }
    }
}

impl Sink for FanOutSink {
    fn name(&self) -> &str {
        WEBHOOKS_GROUP
    }

    /// Bodies are forwarded as Terra sent them: nothing is classified.
    fn plan_depth(&self) -> PlanDepth {
        PlanDepth::Envelope
    }

    async fn stored_positions(&mut self) -> Result<Option<BTreeMap<u32, u64>>, SinkError> {
        terra_schema::positions::stored_in(&self.target, WEBHOOK_POSITIONS)
            .await
            .map(Some)
            .map_err(SinkError::from)
    }

    async fn write(&mut self, batch: &[Planned]) -> Result<WriteStats, SinkError> {
        let lane = self.shared.lane();
        if let Some(lane) = &lane {
            // the dispatcher of this process is starting: its first batches can then have
            // first attempts too
            lane.wait_ready(LANE_WAIT).await;
        }
        let out = match fan_out(&self.target, &self.settings, lane.as_ref(), batch).await {
            Ok(out) => out,
            Err(FanOutError::Behind(stored)) => return Err(SinkError::Behind(stored)),
            Err(FanOutError::Sql(err)) => return Err(err.into()),
        };
        for event in out.events {
            self.shared.cache.put(event);
        }
        let mut created = 0;
        for (endpoint, n) in &out.deliveries {
            self.metrics.created(endpoint, *n);
            created += n;
        }
        for endpoint in &out.pending {
            self.shared.wake(endpoint);
        }
        if let Some(lane) = lane {
            for (endpoint, (delivered, gone)) in &out.first {
                lane.recorded(endpoint, *delivered, *gone).await;
            }
        }
        Ok(WriteStats {
            records: out.records,
            replayed: out.replayed,
            payloads: created,
            ..WriteStats::default()
        })
    }
}

/// What one fan-out batch wrote.
#[derive(Debug, Default)]
pub struct FanOut {
    /// Records already fanned out (a replay).
    pub replayed: usize,
    /// Records written (with or without deliveries).
    pub records: usize,
    /// Deliveries created, per endpoint.
    pub deliveries: BTreeMap<String, usize>,
    /// The events kept for the dispatcher (those with a delivery still to send).
    pub events: Vec<EventRow>,
    /// Endpoints with deliveries left pending.
    pub pending: Vec<String>,
    /// Endpoints that had first attempts: (any delivered, any answered 410).
    pub first: Vec<(String, (bool, bool))>,
}

/// Why a fan-out batch was not written.
#[derive(Debug)]
pub enum FanOutError {
    Sql(SqlError),
    /// The stored positions are before the batch: read again from them.
    Behind(BTreeMap<u32, u64>),
}

impl From<SqlError> for FanOutError {
    fn from(err: SqlError) -> Self {
        Self::Sql(err)
    }
}

impl From<sqlx::Error> for FanOutError {
    fn from(err: sqlx::Error) -> Self {
        Self::Sql(err.into())
    }
}

/// A chunk with its first attempts' ends (all [`First::NotSent`] without a lane).
struct Sent {
    p: Pairs,
    firsts: Vec<First>,
}

/// Sends a chunk's first attempts to the endpoints that take them now.
async fn send_chunk(lane: Option<&Arc<Lane>>, p: Pairs) -> Sent {
    let eligible = lane
        .map(|l| l.eligible())
        .filter(|e| e.iter().any(|yes| *yes));
    let firsts = match (lane, eligible) {
        (Some(lane), Some(eligible)) if !p.pairs.is_empty() => {
            let send: Vec<bool> = p.pairs.iter().map(|&(_, e)| eligible[e]).collect();
            lane.first_attempts(&p.events, &p.pairs, &send).await
        }
        _ => p.pairs.iter().map(|_| First::NotSent).collect(),
    };
    Sent { p, firsts }
}

/// Sends the next chunk's first attempts (if any) while `write` runs.
async fn overlapped<T>(
    lane: Option<&Arc<Lane>>,
    next: Option<Pairs>,
    write: impl Future<Output = T>,
) -> (T, Option<Sent>) {
    let send = async {
        match next {
            Some(p) => Some(send_chunk(lane, p).await),
            None => None,
        }
    };
    tokio::join!(write, send)
}

/// Writes a batch's deliveries (one per matching endpoint) with the batch's positions, first
/// attempts sent before where `lane` says so. Records at or before the stored positions are
/// skipped. The batch goes in chunks: a chunk's rows are written while the next chunk's first
/// attempts are in flight.
///
/// Postgres, MySQL (and SQLite without first attempts): one transaction, the positions'
/// writer lock held from before the first attempt to the commit, so a second fan-out (another
/// replica) waits and then finds the batch written. SQLite with first attempts (one node,
/// one writer that the dispatcher needs meanwhile): a transaction per chunk, each checking
/// the positions it continues from under the lock, so the lock is not held while attempts
/// are in flight.
pub(crate) async fn fan_out(
    target: &SqlTarget,
    settings: &WebhookSettings,
    lane: Option<&Arc<Lane>>,
    batch: &[Planned],
) -> Result<FanOut, FanOutError> {
    let firsts = lane.is_some_and(|l| l.eligible().iter().any(|yes| *yes));
    let hold = target.dialect() != Dialect::Sqlite || !firsts;
    // SQLite's lock is not held while attempts are in flight: none in this batch then
    let lane = lane.filter(|_| target.dialect() != Dialect::Sqlite || !hold);
    let mut tx = target.pool().begin().await?;
    let stored = positions::read_in(target, &mut tx, WEBHOOK_POSITIONS, hold).await?;
    // `chunk_pairs` (1,024 unless tests shorten it) per chunk in one transaction; 4 times as
    // many where each chunk is a transaction of its own (SQLite: 4,096 pairs per commit cost
    // less CPU than 1,024 in `terra-bench webhooks`)
    let pairs = match hold {
        true => settings.chunk_pairs,
        false => settings.chunk_pairs * 4,
    };
    let Some(chunks) = chunks_of(settings, batch, &stored, (pairs, hold)) else {
        tx.rollback().await?;
        return Err(FanOutError::Behind(stored));
    };
    let mut out = FanOut::default();
    let mut chunks = chunks.into_iter();
    let mut current = match chunks.next() {
        Some(p) => Some(send_chunk(lane, p).await),
        None => None,
    };
    if hold {
        // begun by the first chunk that keeps events (most batches keep none)
        let mut events_tx = None;
        let separate = separate_events(target);
        let mut last = BTreeMap::new();
        let mut told = Vec::new();
        while let Some(sent) = current {
            last.extend(sent.p.last.iter().map(|(&k, &v)| (k, v)));
            let (written, next) = overlapped(
                lane,
                chunks.next(),
                write_chunk(
                    target,
                    &mut tx,
                    separate.then_some(&mut events_tx),
                    settings,
                    sent,
                ),
            )
            .await;
            told.extend(out.add(written?));
            current = next;
        }
        // the events first: a delivery is never committed without its body
        if let Some(events_tx) = events_tx {
            events_tx.commit().await?;
        }
        if !last.is_empty() {
            positions::write(target, &mut tx, WEBHOOK_POSITIONS, &last, now_ms()).await?;
        }
        tx.commit().await?;
        tell(told);
    } else {
        tx.rollback().await?;
        let mut expected = stored;
        while let Some(sent) = current {
            let after: BTreeMap<u32, u64> = sent.p.last.iter().map(|(&k, &v)| (k, v + 1)).collect();
            let (written, next) = overlapped(
                lane,
                chunks.next(),
                commit_chunk(target, settings, sent, &expected),
            )
            .await;
            tell(out.add(written?));
            for (partition, next) in after {
                let at = expected.entry(partition).or_default();
                *at = (*at).max(next);
            }
            current = next;
        }
    }
    Ok(out)
}

/// Whether a batch's events (the bodies of deliveries still to send) are written in a
/// transaction of their own, on a second connection, at the same time as its deliveries:
/// Postgres and MySQL, with a pool of at least 3 connections (the dispatcher keeps one).
/// That transaction commits before the deliveries' one, so no delivery is ever committed
/// without its body; a batch that fails after it leaves events no delivery refers to, which
/// the batch written again finds there (and the sweep leaves alone until the positions pass
/// them: see the `prune` module). The bodies of an endpoint that is down are then no longer
/// on the fan-out's critical path: measured on Postgres, they were 37 % of each chunk's
/// write, which made a down endpoint slow the healthy ones.
fn separate_events(target: &SqlTarget) -> bool {
    target.dialect() != Dialect::Sqlite && target.pool().options().get_max_connections() >= 3
}

/// Tells attempts still in flight the ids of their deliveries, once written.
fn tell(told: Vec<(oneshot::Sender<i64>, i64)>) {
    for (tell, id) in told {
        let _ = tell.send(id);
    }
}

/// A chunk written in a transaction of its own (SQLite with first attempts), after checking
/// under the lock that the positions are still where the chunk continues from.
async fn commit_chunk(
    target: &SqlTarget,
    settings: &WebhookSettings,
    sent: Sent,
    expected: &BTreeMap<u32, u64>,
) -> Result<Written, FanOutError> {
    let mut tx = target.pool().begin().await?;
    let again = positions::read_in(target, &mut tx, WEBHOOK_POSITIONS, true).await?;
    if &again != expected {
        tx.rollback().await?;
        return Err(FanOutError::Behind(again));
    }
    let last = sent.p.last.clone();
    let written = write_chunk(target, &mut tx, None, settings, sent).await?;
    if !last.is_empty() {
        positions::write(target, &mut tx, WEBHOOK_POSITIONS, &last, now_ms()).await?;
    }
    tx.commit().await?;
    Ok(written)
}
