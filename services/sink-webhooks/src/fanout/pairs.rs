//! A batch's (event, endpoint) pairs, and the batch cut into chunks.

use std::collections::BTreeMap;
use std::sync::Arc;

use terra_projector::plan::{Plan, Planned};
use terra_schema::positions::{Place, Resume};

use crate::endpoint::WebhookSettings;
use crate::store::EventRow;

/// A batch's events with deliveries, and its (event, endpoint) pairs.
#[derive(Default)]
pub(super) struct Pairs {
    pub(super) replayed: usize,
    pub(super) records: usize,
    pub(super) last: BTreeMap<u32, u64>,
    pub(super) events: Vec<Arc<EventRow>>,
    /// (partition, offset, received at) of each event.
    pub(super) at: Vec<(i64, i64, i64)>,
    /// (event, endpoint): indexes into `events` and the settings' endpoints.
    pub(super) pairs: Vec<(usize, usize)>,
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
    let mut resume = Resume::new(stored, check_start);
    for planned in batch {
        let partition = planned.position.partition;
        match resume.place(partition, planned.position.offset) {
            Place::Replay => {
                p.replayed += 1;
                continue;
            }
            Place::Gap => return None,
            Place::Next => {}
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
pub(super) fn chunks_of(
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
