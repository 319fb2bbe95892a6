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
/// stored positions are before the batch. A chunk's rows are written while the next chunk's
/// first attempts are in flight, and each chunk waits for its own first attempts at most
/// [`crate::first::FIRST_WAIT`]: a batch of 4,000 records to 4 endpoints is 16,000 attempts,
/// more than a second's worth on the 2-core machine, so with one wait per batch most of them
/// went through the dispatcher. Where `taper`, the chunks taper off at the end of the batch
/// (see [`chunk_sizes`]).
pub(super) fn chunks_of(
    settings: &WebhookSettings,
    batch: &[Planned],
    stored: &BTreeMap<u32, u64>,
    (pairs, taper): (usize, bool),
) -> Option<Vec<Pairs>> {
    let records = (pairs / settings.endpoints.len().max(1)).max(1);
    let sizes = match taper {
        true => chunk_sizes(batch.len(), records),
        false => batch.chunks(records).map(<[_]>::len).collect(),
    };
    let mut next = stored.clone();
    let mut chunks = Vec::new();
    let mut rest = batch;
    for (i, size) in sizes.into_iter().enumerate() {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let p = pairs_of(settings, chunk, &next, i == 0)?;
        for (&partition, &last) in &p.last {
            next.insert(partition, last + 1);
        }
        chunks.push(p);
    }
    Some(chunks)
}

/// The smallest chunk at the end of a batch, as a fraction of a full one.
const TAPER_END: usize = 16;

/// Records per chunk for a batch of `total` records, chunks of at most `full`: full chunks,
/// then each smaller than the one before it by 5/8 down to `full / 16`. Where the batch is one
/// transaction (Postgres, MySQL), nothing is sent while its last chunk is written and it
/// commits (the next batch's first attempts cannot start before the positions' lock is
/// taken again), so that last chunk is small; and each chunk's first attempts (sent while the
/// chunk before it is written) last about as long as that write, since a row costs less to
/// write than an attempt costs to send. In `terra-bench webhooks` on Postgres with one
/// endpoint, the last of 4 full chunks took 15 % of each batch's time with nothing in flight;
/// tapered, the healthy endpoint's ratio went from 0.49-0.51 to 0.58-0.60. SQLite (a commit
/// per chunk) keeps full chunks: more commits cost it more than the tail saved.
pub(super) fn chunk_sizes(total: usize, full: usize) -> Vec<usize> {
    let full = full.max(1);
    let mut sizes = Vec::new();
    let mut size = (full / TAPER_END).max(1);
    let mut left = total;
    while left > 0 {
        let take = size.min(left);
        sizes.push(take);
        left -= take;
        size = (size * 8 / 5).max(size + 1).min(full);
    }
    sizes.reverse();
    sizes
}

#[cfg(test)]
mod tests {
    use super::chunk_sizes;

    #[test]
    fn chunks_are_full_then_taper_off_to_a_sixteenth() {
        let sizes = chunk_sizes(4_000, 1_024);
        assert_eq!(sizes.iter().sum::<usize>(), 4_000);
        assert_eq!(sizes, [282, 1_024, 1_024, 665, 416, 260, 163, 102, 64]);
        assert!(sizes.iter().all(|&s| s <= 1_024));
    }

    #[test]
    fn a_small_batch_is_one_chunk_and_nothing_is_lost() {
        assert_eq!(chunk_sizes(5, 1_024), [5]);
        assert_eq!(chunk_sizes(0, 1_024), Vec::<usize>::new());
        assert_eq!(chunk_sizes(3, 1), [1, 1, 1]);
        for total in [1, 63, 64, 65, 1_000, 1_024, 9_999] {
            for full in [1, 2, 16, 256, 1_024] {
                let sizes = chunk_sizes(total, full);
                assert_eq!(
                    sizes.iter().sum::<usize>(),
                    total,
                    "{total} in chunks of {full}"
                );
                assert!(sizes.iter().all(|&s| (1..=full).contains(&s)));
            }
        }
    }
}
