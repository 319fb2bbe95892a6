//! The projector loop shared by every sink: consume the log as the projection's own group in
//! batches, plan each record, write the batch through the sink, then commit the positions.
//!
//! - Poison (a record the sink refuses) is split out of its batch and written as a dead
//!   letter with the reason and its position; the projector moves on.
//! - An outage (database or store down, deadlock, timeout) pauses the loop with capped
//!   exponential backoff and retries the same batch: nothing is skipped.
//! - A refusal (credentials, permissions, a missing bucket, a setting the sink does not
//!   accept) is paused and retried the same way, since someone can fix it without a restart,
//!   but it will not pass by itself: it is logged as an error naming the cause, counted and
//!   shown (`ProjectorMetrics::refusal`, for readiness) until a write succeeds.
//! - A sink that stores its positions (SQL) is the authority on where to resume: the runner
//!   seeks the consumer there at start and whenever the sink reports a gap.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use terra_eventlog::{EventLog, LogError, Position};
use terra_runtime::{Backoff, CancellationToken, LagBound, Retry};
use tracing::Instrument;

use crate::metrics::ProjectorMetrics;
use crate::plan::{DeadLetter, Plan, PlanDepth, Planned};
use crate::read_ahead::{Batch, ReadAhead, next_batch, read_ahead};
use crate::shared_plans::PlanReader;

/// What a sink tells the runner when a write did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The sink is unreachable or not ready: retry the same batch later.
    #[error("sink unavailable: {0}")]
    Outage(String),
    /// The sink refuses something in this batch's data.
    #[error("sink rejected the data: {0}")]
    Rejected(String),
    /// The sink refuses every write until someone acts (credentials, permissions, a missing
    /// bucket, a setting it does not accept): retried like an outage, but reported as a
    /// problem that will not pass by itself. The text names the cause, never a secret or a
    /// value.
    #[error("sink refused the write: {0}")]
    Refused(String),
    /// The sink's stored positions are before this batch: read again from there.
    #[error("sink positions are behind the batch")]
    Behind(BTreeMap<u32, u64>),
    /// Retrying cannot help (configuration, schema): stop.
    #[error("sink failed: {0}")]
    Fatal(String),
}

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Records applied (including dead letters).
    pub records: usize,
    /// Records skipped because the sink already had them (a replay).
    pub replayed: usize,
    /// Payload rows written.
    pub payloads: usize,
    /// Payload copies older than what the sink has (last writer wins).
    pub superseded: usize,
    /// Records dead-lettered.
    pub dead: usize,
}

impl WriteStats {
    /// Adds another write's counts (a batch written in parts).
    pub fn add(&mut self, other: WriteStats) {
        self.records += other.records;
        self.replayed += other.replayed;
        self.payloads += other.payloads;
        self.superseded += other.superseded;
        self.dead += other.dead;
    }
}

/// A projection target.
pub trait Sink: Send {
    /// Short name for logs and metrics (`sql`).
    fn name(&self) -> &str;

    /// Positions the sink stores itself (partition → next offset), or `None` when it relies
    /// on the log's committed positions.
    fn stored_positions(
        &mut self,
    ) -> impl Future<Output = Result<Option<BTreeMap<u32, u64>>, SinkError>> + Send;

    /// How much of each record this sink needs planned (the default: all of it).
    fn plan_depth(&self) -> PlanDepth {
        PlanDepth::Full
    }

    /// Writes a batch atomically, or nothing of it. A sink that stores its own positions may
    /// return before the batch's last part is committed (it finishes while the next batch is
    /// sent: the webhooks fan-out); it then says in the next `write` or `flush` if that part
    /// failed, and its positions say where to read again.
    fn write(
        &mut self,
        batch: &[Planned],
    ) -> impl Future<Output = Result<WriteStats, SinkError>> + Send;

    /// Finishes what the last `write` left in flight. Called when the log has nothing new and
    /// before the runner returns. `Behind` when that part was not written: read again from
    /// the positions it gives.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}

/// Records per batch unless set (`projector.batch_size`). A projector that is behind reads
/// full batches: 4,000 records per transaction or folder sync let `standalone`'s projectors
/// catch up with 10,000 webhooks/s in 3-4 s after 40 s of load instead of 16-19 s with 1,000
/// (issue 16, README "Standalone end to end"), for about 70 MB more peak memory. A log that
/// is not behind still gives small batches (the linger), so latency is unchanged.
pub const DEFAULT_BATCH_SIZE: usize = 4_000;

/// Longest wait for a batch to fill unless set (`projector.batch_wait_ms`): the latency a
/// record may wait for company, traded against transactions per second.
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_millis(50);

/// How long a batch that has started stays open for more records unless set
/// (`projector.batch_linger_ms`): under load the log hands over a few records per group
/// commit, and a transaction (SQL) or a sync (folder) per handful of records would cost more
/// CPU than the records themselves; a few milliseconds gather hundreds.
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(5);

/// A batch lingers only when its first poll brought at least this many records: the log is
/// handing them over in bulk (the ingress is busy). One or two records at a time mean a
/// quiet log, where waiting would only add latency.
pub const LINGER_FROM_RECORDS: usize = 8;

/// Records a projection of `standalone` may be behind its log before the ingress holds new
/// webhooks (while its lag grows past its best) unless set (`projector.max_lag`): about 1 s
/// of the object projection's work once a load ends on the 2-core development machine, so
/// after any burst the projections are caught up within about a second of its end (issue 16:
/// under wrk at saturation, caught up 0.7-1.1 s after the load against 4.0-5.3 s with
/// 50,000, for as many webhooks acked; the cost is more held requests, p99 ~0.4-0.5 s).
/// [`terra_runtime::lag`] says why a hold and not a refusal.
pub const DEFAULT_MAX_LAG: u64 = 10_000;

/// Settings of one projector.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// The consumer group (one per projection: `sql`, `objects`, ...).
    pub group: String,
    /// Most records per batch.
    pub batch_size: usize,
    /// Longest wait for the first record of a batch (an idle projector wakes this often).
    pub batch_wait: Duration,
    /// Once a batch has started with at least [`LINGER_FROM_RECORDS`] records, how long it
    /// waits for more (up to `batch_size`).
    pub batch_linger: Duration,
    pub backoff: Backoff,
    /// Stop once the log is read to the end (rebuilds, benchmarks) instead of following it.
    pub stop_at_end: bool,
    /// Where this projector reports how far behind the log's end it is after every batch
    /// (`standalone`: its ingress holds webhooks while a projection is too far behind).
    pub lag_bound: Option<LagBound>,
    /// Plans shared with the other projectors of the process reading the same log
    /// (`standalone`): each record is planned once, by whichever reads it first.
    pub plans: Option<PlanReader>,
}

impl ProjectorConfig {
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            batch_size: DEFAULT_BATCH_SIZE,
            batch_wait: DEFAULT_BATCH_WAIT,
            batch_linger: DEFAULT_BATCH_LINGER,
            backoff: Backoff::DEFAULT,
            stop_at_end: false,
            lag_bound: None,
            plans: None,
        }
    }
}

/// Why the projector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{0}")]
    Sink(SinkError),
}

/// Runs the projector until `shutdown` is cancelled (or the end of the log, with
/// `stop_at_end`). Returns the totals. A batch in progress at shutdown is finished first.
pub async fn run<S: Sink>(
    config: &ProjectorConfig,
    log: &EventLog,
    sink: &mut S,
    metrics: &ProjectorMetrics,
    shutdown: CancellationToken,
    mut progress: impl FnMut(&WriteStats),
) -> Result<WriteStats, ProjectorError> {
    let mut consumer = log.consumer(&config.group)?;
    let mut totals = WriteStats::default();
    let name = sink.name().to_owned();
    let stored = retry!(
        Retry::new(config.backoff, &shutdown, &name),
        metrics,
        sink.stored_positions().await
    );
    // where reading stands per partition (for stop_at_end): the sink's positions, then
    // every record read
    let mut next_read: BTreeMap<u32, u64> = BTreeMap::new();
    match stored {
        Some(Ok(Some(positions))) => {
            consumer.seek(&positions).await?;
            next_read = positions.clone();
            tracing::info!(
                sink = sink.name(),
                partitions = positions.len(),
                "resuming from the sink's stored positions"
            );
        }
        Some(Ok(None)) => {}
        Some(Err(err)) => return Err(ProjectorError::Sink(err)),
        None => return Ok(totals),
    }
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    let depth = sink.plan_depth();
    // the next batch, read and planned while the previous one was being written
    let mut ahead: Option<Batch> = None;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let Batch { consumed, planned } = match ahead.take() {
            Some(batch) => batch,
            None => {
                let consumed = tokio::select! {
                    polled = next_batch(&mut consumer, config) => polled?,
                    () = shutdown.cancelled() => continue,
                };
                Batch::plan(consumed, depth, config.plans.as_ref())
            }
        };
        if let Some(bound) = &config.lag_bound {
            // what is read ahead counts as read: at most one batch more than the truth
            if let Ok(lag) = consumer.lag().await {
                bound.report(
                    &config.group,
                    lag.values().sum::<u64>() + consumed.len() as u64,
                );
            }
        }
        if last_lag.elapsed() >= Duration::from_secs(2) || consumed.is_empty() {
            if let Ok(lag) = consumer.lag().await {
                metrics.set_lag(sink.name(), &lag);
            }
            last_lag = Instant::now();
        }
        if consumed.is_empty() {
            // the log is quiet: what the sink still has in flight is finished now
            match sink.flush().await {
                Ok(()) => {}
                Err(SinkError::Behind(stored)) => {
                    tracing::warn!(
                        sink = sink.name(),
                        "the sink's last write did not finish: reading again from its positions"
                    );
                    consumer.seek(&stored).await?;
                    next_read = stored;
                    continue;
                }
                Err(SinkError::Fatal(why)) => {
                    return Err(ProjectorError::Sink(SinkError::Fatal(why)));
                }
                Err(err) => {
                    metrics.sink_error(&name);
                    tracing::warn!(sink = sink.name(), error = %err, "the sink cannot finish its last write yet");
                    continue;
                }
            }
            if config.stop_at_end {
                let ends = log.end_offsets().await?;
                let read_all = ends
                    .iter()
                    .all(|(p, &end)| next_read.get(p).copied().unwrap_or(0) >= end);
                // a group resumed from the log's commits (sinks without positions of their
                // own) never read its already committed partitions: the consumer's lag says
                // where it stands (exact for the embedded log; Kafka knows only partitions it
                // has read from)
                let caught_up = || async {
                    consumer
                        .lag()
                        .await
                        .is_ok_and(|lag| ends.keys().all(|p| lag.get(p) == Some(&0)))
                };
                if read_all || caught_up().await {
                    break;
                }
            }
            continue;
        }
        for c in &consumed {
            let next = next_read.entry(c.position.partition).or_insert(0);
            *next = (*next).max(c.position.offset + 1);
        }
        let started = Instant::now();
        let positions: Vec<Position> = consumed.iter().map(|c| c.position).collect();
        let span = batch_span(&name, &consumed);
        drop(consumed);
        // the next batch is read and planned by a task of its own while this one is written
        // (the write's work is mostly on the sink's threads: SQLite's, the file writers', the
        // database's), so the two overlap instead of taking turns
        let written_flag = ReadAhead::default();
        let reader = tokio::spawn(read_ahead(
            consumer,
            config.batch_size,
            config.batch_linger,
            depth,
            config.plans.clone(),
            written_flag.clone(),
        ));
        let written = write_resilient(config, metrics, sink, &planned, &shutdown)
            .instrument(span)
            .await;
        written_flag.done();
        let (returned, read) = match reader.await {
            Ok(returned) => returned,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // the runtime is shutting down
            Err(_) => break,
        };
        consumer = returned;
        match written {
            Some(Ok(stats)) => {
                metrics.batch(sink.name(), &stats, started.elapsed());
                totals.add(stats);
                progress(&totals);
                if let Err(err) = consumer.commit(&positions).await {
                    // the sink's own positions (or idempotent writes) make this harmless
                    tracing::warn!(error = %err, "failed to commit log positions; they will be read again");
                }
                ahead = Some(read?);
            }
            Some(Err(SinkError::Behind(stored))) => {
                tracing::warn!(
                    sink = sink.name(),
                    "the sink's positions are behind this batch (tables swapped by a rebuild?): reading again from them"
                );
                // what was read ahead is dropped with the positions it came after
                consumer.seek(&stored).await?;
                next_read = stored;
            }
            Some(Err(err)) => return Err(ProjectorError::Sink(err)),
            None => break,
        }
    }
    if let Err(err) = sink.flush().await {
        // its stored positions were not moved past it: read again at the next start
        tracing::warn!(sink = sink.name(), error = %err, "the sink's last write did not finish before the projector stopped");
    }
    Ok(totals)
}

/// A span per batch write, linked to the ingress request span of every record in it (the
/// W3C `traceparent` the ingress put in the record headers), so a trace leads from Terra's
/// request through the log into the write that projected it.
fn batch_span(sink: &str, consumed: &[terra_eventlog::Consumed]) -> tracing::Span {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "projector.batch",
        otel.kind = "consumer",
        sink,
        records = consumed.len()
    );
    if span.is_disabled() {
        return span;
    }
    let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
    for c in consumed {
        let Some(traceparent) = c.record.header(terra_core::envelope::HEADER_TRACEPARENT) else {
            continue;
        };
        let Ok(traceparent) = std::str::from_utf8(traceparent) else {
            continue;
        };
        let mut carrier = std::collections::HashMap::new();
        carrier.insert(
            terra_core::envelope::HEADER_TRACEPARENT.to_owned(),
            traceparent.to_owned(),
        );
        let context = propagator.extract(&carrier);
        let remote = context.span().span_context().clone();
        if remote.is_valid() {
            span.add_link(remote);
        }
    }
    span
}

/// Writes a batch: outages are retried with backoff (until shutdown: `None`); a rejected
/// batch is split to find the poison records, which become dead letters.
async fn write_resilient<S: Sink>(
    config: &ProjectorConfig,
    metrics: &ProjectorMetrics,
    sink: &mut S,
    batch: &[Planned],
    shutdown: &CancellationToken,
) -> Option<Result<WriteStats, SinkError>> {
    let name = sink.name().to_owned();
    let mut retry = Retry::new(config.backoff, shutdown, &name);
    match retry!(retry, metrics, sink.write(batch).await)? {
        Err(SinkError::Rejected(why)) => {
            tracing::warn!(sink = %name, records = batch.len(), reason = %why, "batch rejected; writing its records one by one to find the poison");
            let mut totals = WriteStats::default();
            for planned in batch {
                let single = std::slice::from_ref(planned);
                let stats = match retry!(retry, metrics, sink.write(single).await)? {
                    Err(SinkError::Rejected(why)) => {
                        let dead = as_dead_letter(planned, &why);
                        tracing::warn!(sink = %name, partition = planned.position.partition, offset = planned.position.offset, reason = %why, "record dead-lettered");
                        match retry!(
                            retry,
                            metrics,
                            sink.write(std::slice::from_ref(&dead)).await
                        )? {
                            Ok(stats) => stats,
                            Err(err) => return Some(Err(err)),
                        }
                    }
                    Ok(stats) => stats,
                    Err(err) => return Some(Err(err)),
                };
                totals.add(stats);
            }
            Some(Ok(totals))
        }
        other => Some(other),
    }
}

/// Evaluates `$attempt` (an expression awaiting a sink call) until it is not an outage,
/// waiting with `$retry` (a [`Retry`]) in between; `None` when shutdown came first. A macro
/// rather than a function taking an async closure: the borrow of the sink inside must stay
/// `Send`.
macro_rules! retry {
    ($retry:expr, $metrics:expr, $attempt:expr) => {{
        let retry: &mut Retry<'_> = &mut $retry;
        loop {
            match $attempt {
                Err(SinkError::Outage(why)) => {
                    $metrics.sink_error(retry.what());
                    if !retry.wait(&why).await {
                        break None;
                    }
                }
                Err(SinkError::Refused(why)) => {
                    $metrics.sink_error(retry.what());
                    if $metrics.refused(retry.what(), &why) || retry.failures().is_power_of_two() {
                        // a new cause at once, then as often as the retry's own lines
                        tracing::error!(sink = retry.what(), cause = %why, "the sink refuses writes: this will not pass by itself; the batch is retried until it is fixed");
                    }
                    if !retry.wait(&why).await {
                        break None;
                    }
                }
                other => {
                    if other.is_ok() && $metrics.accepted(retry.what()) {
                        tracing::info!(sink = retry.what(), "the sink accepts writes again");
                    }
                    break Some(retry.done(other));
                }
            }
        }
    }};
}
use retry;

/// How the reason of a record the sink refused starts (see [`as_dead_letter`]).
pub const REJECTED_PREFIX: &str = "rejected by the sink: ";

/// The record as a dead letter, keeping its body.
fn as_dead_letter(planned: &Planned, why: &str) -> Planned {
    Planned {
        plan: Plan::Dead(DeadLetter {
            reason: format!("{REJECTED_PREFIX}{why}"),
        }),
        ..planned.clone()
    }
}
