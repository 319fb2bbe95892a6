//! The runner's reading: the next batch when none was read ahead (with its linger), and the
//! read-ahead that reads and plans the next batch while the current one is written.

use std::time::Duration;

use terra_eventlog::{Consumer, LogError};

use crate::plan::{self, PlanDepth, Planned};
use crate::runner::{LINGER_FROM_RECORDS, ProjectorConfig};
use crate::shared_plans::PlanReader;

/// Records read from the log with their plans.
pub(crate) struct Batch {
    pub(crate) consumed: Vec<terra_eventlog::Consumed>,
    pub(crate) planned: Vec<Planned>,
}

impl Batch {
    pub(crate) fn plan(
        consumed: Vec<terra_eventlog::Consumed>,
        depth: PlanDepth,
        plans: Option<&PlanReader>,
    ) -> Self {
        let planned = plan_all(&consumed, depth, plans);
        Self { consumed, planned }
    }
}

/// The plans of `consumed`: shared with the other projectors of the process when it has
/// [`crate::SharedPlans`], else planned here.
fn plan_all(
    consumed: &[terra_eventlog::Consumed],
    depth: PlanDepth,
    plans: Option<&PlanReader>,
) -> Vec<Planned> {
    match plans {
        Some(reader) => reader.plan(consumed, depth),
        None => consumed.iter().map(|c| plan::plan_to(c, depth)).collect(),
    }
}

/// The next batch when none was read ahead: waits up to `batch_wait` for a first record; a
/// batch that started in bulk stays open for its linger, so it gathers what arrives.
pub(crate) async fn next_batch(
    consumer: &mut Consumer,
    config: &ProjectorConfig,
) -> Result<Vec<terra_eventlog::Consumed>, LogError> {
    let mut consumed = consumer.poll(config.batch_size, config.batch_wait).await?;
    if consumed.len() >= LINGER_FROM_RECORDS && consumed.len() < config.batch_size {
        let until = tokio::time::Instant::now() + config.batch_linger;
        while consumed.len() < config.batch_size {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let more = consumer
                .poll(config.batch_size - consumed.len(), left)
                .await?;
            if more.is_empty() {
                break;
            }
            consumed.extend(more);
        }
    }
    Ok(consumed)
}

/// Tells [`read_ahead`] that the batch being written is done.
#[derive(Clone, Default)]
pub(crate) struct ReadAhead(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl ReadAhead {
    pub(crate) fn done(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    fn is_done(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// How long one poll of the read-ahead waits, so that it notices the write's end without
/// cancelling a poll (a Kafka poll is not cancel-safe once it holds a message).
const READ_AHEAD_SLICE: Duration = Duration::from_millis(2);

/// Reads and plans the next batch while the current one is written: up to `max` records,
/// until the write is done (and, for a batch that started in bulk, its linger is over). Owns
/// the consumer meanwhile and hands it back. Each poll runs to its end.
pub(crate) async fn read_ahead(
    mut consumer: Consumer,
    max: usize,
    linger: Duration,
    depth: PlanDepth,
    plans: Option<PlanReader>,
    written: ReadAhead,
) -> (Consumer, Result<Batch, LogError>) {
    let mut batch = Batch {
        consumed: Vec::new(),
        planned: Vec::new(),
    };
    let mut lingers_until = None;
    while batch.consumed.len() < max {
        if written.is_done() {
            let lingering = lingers_until.is_some_and(|until| tokio::time::Instant::now() < until);
            if !lingering {
                break;
            }
        }
        let more = match consumer
            .poll(max - batch.consumed.len(), READ_AHEAD_SLICE)
            .await
        {
            Ok(more) => more,
            Err(err) if batch.consumed.is_empty() => return (consumer, Err(err)),
            // what was read is written first; the error comes again on the next poll
            Err(_) => break,
        };
        if more.is_empty() {
            continue;
        }
        if batch.consumed.is_empty() && more.len() >= LINGER_FROM_RECORDS {
            lingers_until = Some(tokio::time::Instant::now() + linger);
        }
        batch.planned.extend(plan_all(&more, depth, plans.as_ref()));
        batch.consumed.extend(more);
    }
    (consumer, Ok(batch))
}
