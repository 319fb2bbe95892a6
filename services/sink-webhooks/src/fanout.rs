//! The fan-out as a projector [`Sink`] (group `webhooks`): each batch's deliveries (one per
//! matching endpoint) written with the batch's positions in one transaction, every
//! (event, endpoint) pair exactly once. Where the dispatcher runs in the same process, the
//! first attempts to quick endpoints are sent before that transaction and written with it
//! ([`crate::first`]); the other deliveries are written pending, and their endpoints woken.

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::Executor;
use terra_projector::plan::{Plan, PlanDepth, Planned};
use terra_projector::{Sink, SinkError, WriteStats};
use terra_schema::tables::{WEBHOOK_EVENTS, WEBHOOK_POSITIONS};
use terra_schema::{Dialect, SqlError, SqlTarget, Val, insert_rows, positions};
use tokio::sync::oneshot;

use crate::dispatch::{Shared, now_ms};
use crate::endpoint::WebhookSettings;
use crate::finish::{attempt_row, insert_attempts};
use crate::first::{First, Lane, health};
use crate::metrics::WebhookMetrics;
use crate::store::{EventRow, Finished, Leased, Next};

mod sql;
use sql::{EVENT_COLUMNS, STATEMENT_BYTES, by_bytes, delivery_row, event_row, insert_deliveries};

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

/// A batch's events with deliveries, and its (event, endpoint) pairs.
#[derive(Default)]
struct Pairs {
    replayed: usize,
    records: usize,
    last: BTreeMap<u32, u64>,
    events: Vec<Arc<EventRow>>,
    /// (partition, offset, received at) of each event.
    at: Vec<(i64, i64, i64)>,
    /// (event, endpoint): indexes into `events` and the settings' endpoints.
    pairs: Vec<(usize, usize)>,
}

/// The batch's pairs, records at or before the stored positions skipped; `None` when the
/// stored positions are before the batch (checked only where `check_start`: a chunk after
/// the first continues the batch).
fn pairs_of(
    settings: &WebhookSettings,
    batch: &[Planned],
    stored: &BTreeMap<u32, u64>,
    check_start: bool,
) -> Option<Pairs> {
    let mut p = Pairs::default();
    let mut started = std::collections::HashSet::new();
    for planned in batch {
        let partition = planned.position.partition;
        let next = stored.get(&partition).copied().unwrap_or(0);
        if planned.position.offset < next {
            p.replayed += 1;
            continue;
        }
        if check_start && started.insert(partition) && planned.position.offset > next {
            return None;
        }
        p.last.insert(partition, planned.position.offset);
        p.records += 1;
        // a record that did not decode has nothing to forward; one the database refused
        // (found by the runner) is skipped, named in a warning
        if planned.envelope_id.is_empty() {
            continue;
        }
        if let Plan::Dead(dead) = &planned.plan
            && dead
                .reason
                .starts_with(terra_projector::runner::REJECTED_PREFIX)
        {
            tracing::warn!(partition, offset = planned.position.offset, reason = %dead.reason, "event not forwarded: the database refused it");
            continue;
        }
        let event = p.events.len();
        for (i, endpoint) in settings.endpoints.iter().enumerate() {
            if endpoint
                .filter
                .matches(&planned.event_type, &planned.origin)
            {
                p.pairs.push((event, i));
            }
        }
        if p.pairs.last().is_some_and(|&(e, _)| e == event) {
            p.events.push(Arc::new(EventRow::of_planned(planned)));
            p.at.push((
                i64::from(partition),
                planned.position.offset as i64,
                planned.received_at_ms,
            ));
        }
    }
    Some(p)
}

/// The batch cut into chunks of about `pairs` pairs, each with its pairs; `None` when the
/// stored positions are before the batch. A chunk's
/// rows are written while the next chunk's first attempts are in flight, and each chunk
/// waits for its own first attempts at most [`crate::first::FIRST_WAIT`]: a batch of 4,000
/// records to 4 endpoints is 16,000 attempts, more than a second's worth on the 2-core
/// machine, so with one wait per batch most of them went through the dispatcher.
fn chunks_of(
    settings: &WebhookSettings,
    batch: &[Planned],
    stored: &BTreeMap<u32, u64>,
    pairs: usize,
) -> Option<Vec<Pairs>> {
    let records = (pairs / settings.endpoints.len().max(1)).max(1);
    let mut next = stored.clone();
    let mut chunks = Vec::new();
    for (i, chunk) in batch.chunks(records).enumerate() {
        let p = pairs_of(settings, chunk, &next, i == 0)?;
        for (&partition, &last) in &p.last {
            next.insert(partition, last + 1);
        }
        chunks.push(p);
    }
    Some(chunks)
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
    let Some(chunks) = chunks_of(settings, batch, &stored, pairs) else {
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
        let mut last = BTreeMap::new();
        let mut told = Vec::new();
        while let Some(sent) = current {
            last.extend(sent.p.last.iter().map(|(&k, &v)| (k, v)));
            let (written, next) = overlapped(
                lane,
                chunks.next(),
                write_chunk(target, &mut tx, settings, sent),
            )
            .await;
            told.extend(out.add(written?));
            current = next;
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
    let written = write_chunk(target, &mut tx, settings, sent).await?;
    if !last.is_empty() {
        positions::write(target, &mut tx, WEBHOOK_POSITIONS, &last, now_ms()).await?;
    }
    tx.commit().await?;
    Ok(written)
}

/// What a chunk wrote, and the attempts in flight to tell their deliveries' ids.
struct Written {
    out: FanOut,
    told: Vec<(oneshot::Sender<i64>, i64)>,
}

impl FanOut {
    /// Adds a chunk's counts; returns its attempts in flight.
    fn add(&mut self, written: Written) -> Vec<(oneshot::Sender<i64>, i64)> {
        let chunk = written.out;
        self.replayed += chunk.replayed;
        self.records += chunk.records;
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

/// Writes a chunk's events (those still to send), deliveries and first attempts in `tx`.
async fn write_chunk(
    target: &SqlTarget,
    tx: &mut terra_schema::positions::Tx,
    settings: &WebhookSettings,
    sent: Sent,
) -> Result<Written, FanOutError> {
    let Sent { p, firsts } = sent;
    let now = now_ms();
    let mut out = FanOut {
        replayed: p.replayed,
        records: p.records,
        ..FanOut::default()
    };
    let mut keep = vec![false; p.events.len()];
    let mut rows = Vec::with_capacity(p.pairs.len());
    for (&(event, endpoint), first) in p.pairs.iter().zip(&firsts) {
        let name = &settings.endpoints[endpoint].name;
        keep[event] |= !matches!(
            first,
            First::Done {
                next: Next::Delivered,
                ..
            }
        );
        rows.push(delivery_row(name, &p.events[event], first, now));
        *out.deliveries.entry(name.clone()).or_default() += 1;
        if matches!(first, First::NotSent | First::InFlight { .. }) && !out.pending.contains(name) {
            out.pending.push(name.clone());
        }
    }
    let dialect = target.dialect();
    let events: Vec<Vec<Val>> = (0..p.events.len())
        .filter(|&i| keep[i])
        .map(|i| event_row(&p.events[i], p.at[i]))
        .collect();
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
    let sent: Vec<String> = p
        .pairs
        .iter()
        .zip(&firsts)
        .filter(|(_, f)| !matches!(f, First::NotSent))
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
