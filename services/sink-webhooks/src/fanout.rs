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
    /// The last batch's last chunk, still committing (SQLite with first attempts).
    tail: Option<Tail>,
    /// A tail failed: batches are committed whole until one is written (so that a record
    /// the database refuses is found by the runner's split, as without tails).
    inline: bool,
    /// A tail failed where `flush` found it: it says where to read again.
    reread: bool,
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
            tail: None,
            inline: false,
            reread: false,
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
        let effects = Effects {
            shared: self.shared.clone(),
            metrics: self.metrics.clone(),
            lane: lane.clone(),
        };
        let to = (&self.target, &self.settings);
        // one record at a time is the runner's split looking for a record the database
        // refuses (or a quiet log): committed before returning, so the refusal is its own
        let tail = (&mut self.tail, !self.inline && batch.len() > 1);
        match fan_out(to, lane.as_ref(), batch, &effects, tail).await {
            Ok(stats) => {
                self.inline = false;
                Ok(stats)
            }
            Err(FanOutError::Behind(stored)) => Err(SinkError::Behind(stored)),
            Err(FanOutError::Sql(err)) => Err(err.into()),
            Err(FanOutError::Tail(why)) => {
                // retried: the positions then show that the batch is ahead of them
                self.inline = true;
                Err(SinkError::Outage(why))
            }
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if let Err(FanOutError::Tail(why)) = settle(self.tail.take().map(|t| t.commit)).await {
            tracing::warn!(reason = %why, "webhook fan-out: its records are read again");
            (self.inline, self.reread) = (true, true);
        }
        if !self.reread {
            return Ok(());
        }
        let stored = terra_schema::positions::stored_in(&self.target, WEBHOOK_POSITIONS)
            .await
            .map_err(SinkError::from)?;
        self.reread = false;
        Err(SinkError::Behind(stored))
    }
}

/// A batch's last chunk committing in a task of its own (SQLite with first attempts), so the
/// next batch's first attempts are sent meanwhile instead of after it.
pub(crate) struct Tail {
    commit: tokio::task::JoinHandle<Result<(), FanOutError>>,
    /// The positions once it has committed.
    after: BTreeMap<u32, u64>,
}

/// Waits for a tail to commit.
async fn settle(
    tail: Option<tokio::task::JoinHandle<Result<(), FanOutError>>>,
) -> Result<(), FanOutError> {
    let Some(commit) = tail else {
        return Ok(());
    };
    let why = match commit.await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(FanOutError::Sql(err))) => err.to_string(),
        Ok(Err(FanOutError::Behind(_))) => "the positions moved".to_owned(),
        Ok(Err(FanOutError::Tail(why))) => why,
        Err(err) => err.to_string(),
    };
    Err(FanOutError::Tail(format!(
        "the previous batch's last chunk was not written: {why}"
    )))
}

/// What follows a commit in this process: the events kept for the dispatcher, the deliveries
/// counted, endpoints with deliveries pending woken, first attempts' health told to the
/// result writer, attempts still in flight told their deliveries' ids.
#[derive(Clone)]
pub(crate) struct Effects {
    shared: Shared,
    metrics: WebhookMetrics,
    lane: Option<Arc<Lane>>,
}

impl Effects {
    async fn committed(&self, written: Written) {
        let Written { out, told } = written;
        tell(told);
        for event in out.events {
            self.shared.cache.put(event);
        }
        for (endpoint, n) in &out.deliveries {
            self.metrics.created(endpoint, *n);
        }
        for endpoint in &out.pending {
            self.shared.wake(endpoint);
        }
        if let Some(lane) = &self.lane {
            for (endpoint, (delivered, gone)) in &out.first {
                lane.recorded(endpoint, *delivered, *gone).await;
            }
        }
    }
}

/// What one fan-out chunk (or batch) wrote.
#[derive(Debug, Default)]
pub struct FanOut {
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
    /// The last batch's last chunk was not written (see [`Tail`]): its records are read again.
    Tail(String),
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
/// are in flight; the batch's last chunk commits in a task of its own (`tail`) while the next
/// batch's first chunk is sent, which waits for it before its own commit.
pub(crate) async fn fan_out(
    (target, settings): (&SqlTarget, &Arc<WebhookSettings>),
    lane: Option<&Arc<Lane>>,
    batch: &[Planned],
    effects: &Effects,
    (tail, defer): (&mut Option<Tail>, bool),
) -> Result<WriteStats, FanOutError> {
    let firsts = lane.is_some_and(|l| l.eligible().iter().any(|yes| *yes));
    let hold = target.dialect() != Dialect::Sqlite || !firsts;
    // SQLite's lock is not held while attempts are in flight: none in this batch then
    let lane = lane.filter(|_| target.dialect() != Dialect::Sqlite || !hold);
    if hold {
        settle(tail.take().map(|t| t.commit)).await?;
        return in_one_transaction(target, settings, lane, batch, effects).await;
    }
    chunk_by_chunk((target, settings), lane, batch, effects, (tail, defer)).await
}

/// What a chunk counts for, once written.
fn stats_of(p: &Pairs) -> WriteStats {
    WriteStats {
        records: p.records,
        replayed: p.replayed,
        payloads: p.pairs.len(),
        ..WriteStats::default()
    }
}

/// The first chunk's first attempts, sent.
async fn send_first(lane: Option<&Arc<Lane>>, first: Option<Pairs>) -> Option<Sent> {
    match first {
        Some(p) => Some(send_chunk(lane, p).await),
        None => None,
    }
}

/// The batch in one transaction, the positions' writer lock held throughout.
async fn in_one_transaction(
    target: &SqlTarget,
    settings: &WebhookSettings,
    lane: Option<&Arc<Lane>>,
    batch: &[Planned],
    effects: &Effects,
) -> Result<WriteStats, FanOutError> {
    let mut tx = target.pool().begin().await?;
    let stored = positions::read_in(target, &mut tx, WEBHOOK_POSITIONS, true).await?;
    // `chunk_pairs` (1,024 unless tests shorten it) per chunk
    let Some(chunks) = chunks_of(settings, batch, &stored, (settings.chunk_pairs, true)) else {
        tx.rollback().await?;
        return Err(FanOutError::Behind(stored));
    };
    let mut stats = WriteStats::default();
    let mut out = FanOut::default();
    let mut chunks = chunks.into_iter();
    let mut current = send_first(lane, chunks.next()).await;
    // begun by the first chunk that keeps events (most batches keep none)
    let mut events_tx = None;
    let separate = separate_events(target);
    let mut last = BTreeMap::new();
    let mut told = Vec::new();
    while let Some(sent) = current {
        stats.add(stats_of(&sent.p));
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
    effects.committed(Written { out, told }).await;
    Ok(stats)
}

/// The batch a transaction per chunk (SQLite with first attempts), its last chunk left
/// committing in `tail` where `defer`; the tail of the batch before is waited for while the
/// first chunk's attempts are in flight.
async fn chunk_by_chunk(
    (target, settings): (&SqlTarget, &Arc<WebhookSettings>),
    lane: Option<&Arc<Lane>>,
    batch: &[Planned],
    effects: &Effects,
    (tail, defer): (&mut Option<Tail>, bool),
) -> Result<WriteStats, FanOutError> {
    let (stored, before) = match tail.take() {
        Some(tail) => (tail.after, Some(tail.commit)),
        None => (positions::stored_in(target, WEBHOOK_POSITIONS).await?, None),
    };
    // 4 times `chunk_pairs` per chunk: 4,096 pairs per commit cost SQLite less CPU than 1,024
    // in `terra-bench webhooks`
    let pairs = (settings.chunk_pairs * 4, false);
    let Some(chunks) = chunks_of(settings, batch, &stored, pairs) else {
        if before.is_none() {
            return Err(FanOutError::Behind(stored));
        }
        settle(before).await?;
        let stored = positions::stored_in(target, WEBHOOK_POSITIONS).await?;
        return Err(FanOutError::Behind(stored));
    };
    let mut stats = WriteStats::default();
    let mut chunks = chunks.into_iter();
    let (settled, mut current) = tokio::join!(settle(before), send_first(lane, chunks.next()));
    settled?;
    let mut expected = stored;
    while let Some(sent) = current {
        stats.add(stats_of(&sent.p));
        let mut after = expected.clone();
        for (&partition, &last) in &sent.p.last {
            let at = after.entry(partition).or_default();
            *at = (*at).max(last + 1);
        }
        let next = chunks.next();
        if next.is_none() && defer {
            // the last chunk: committed while the next batch's first attempts go out
            let (target, settings, effects) = (target.clone(), settings.clone(), effects.clone());
            let commit = tokio::spawn(async move {
                let written = commit_chunk(&target, &settings, sent, &expected).await?;
                effects.committed(written).await;
                Ok(())
            });
            *tail = Some(Tail { commit, after });
            break;
        }
        let (written, next) =
            overlapped(lane, next, commit_chunk(target, settings, sent, &expected)).await;
        effects.committed(written?).await;
        current = next;
        expected = after;
    }
    Ok(stats)
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
