use terra_eventlog::{Consumed, Position, Record};
use terra_testkit::fixture;

use super::*;

const FIXTURES: [&str; 6] = ["sleep", "activity", "auth", "daily", "deauth", "body"];

/// Records at `offsets` of partition `partition`, each a different fixture.
fn records(partition: u32, offsets: std::ops::Range<u64>) -> Vec<Consumed> {
    offsets
        .map(|offset| {
            let body = fixture(FIXTURES[offset as usize % FIXTURES.len()]);
            let mut envelope = terra_testkit::envelope(
                &body,
                Some(1_780_000_000_000 + offset as i64),
                1_780_000_000,
                None,
            );
            envelope.envelope_id = format!("0190b2c4-0000-7000-8000-{offset:012}");
            Consumed {
                position: Position { partition, offset },
                timestamp_ms: 1_780_000_000_000,
                record: Record::of_envelope(&envelope, []),
            }
        })
        .collect()
}

/// What a plan holds, to compare a shared plan with one planned alone.
fn shown(planned: &[Planned]) -> Vec<String> {
    planned.iter().map(|p| format!("{p:?}")).collect()
}

fn alone_plans(consumed: &[Consumed]) -> Vec<Planned> {
    consumed.iter().map(plan::plan).collect()
}

fn alone(consumed: &[Consumed]) -> Vec<String> {
    shown(&alone_plans(consumed))
}

#[test]
fn a_record_planned_by_one_reader_is_taken_by_the_other() {
    let shared = SharedPlans::new(100, usize::MAX);
    let (sql, objects) = (shared.reader(), shared.reader());
    let batch = records(0, 0..10);
    let first = sql.plan(&batch, PlanDepth::Full);
    assert_eq!(shared.kept(), 10, "kept for the other reader");
    assert_eq!(shared.taken(), 0);
    let second = objects.plan(&batch, PlanDepth::Full);
    assert_eq!(shared.taken(), 10, "the other reader planned nothing");
    assert_eq!(shared.kept(), 0, "each plan taken once, then gone");
    assert_eq!(shown(&first), alone(&batch));
    assert_eq!(shown(&second), alone(&batch));
}

#[test]
fn a_counted_reader_counts_the_plans_it_takes() {
    let shared = SharedPlans::new(100, usize::MAX);
    let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
    let (first, second) = (shared.reader(), shared.reader().counted(counter.clone()));
    let batch = records(0, 0..7);
    first.plan(&batch[..5], PlanDepth::Full);
    second.plan(&batch, PlanDepth::Full);
    assert_eq!(counter.get(), 5, "5 taken, 2 planned");
}

#[test]
fn plans_are_kept_only_for_readers_that_have_not_read_them() {
    let shared = SharedPlans::new(100, usize::MAX);
    let (ahead, behind) = (shared.reader(), shared.reader());
    let batch = records(0, 0..10);
    ahead.plan(&batch[..6], PlanDepth::Full);
    // offsets 0-5 were kept for `behind`; it reads 0-9: takes 6, plans 4 and keeps those 4
    // for `ahead`, which has not read them
    let read = behind.plan(&batch, PlanDepth::Full);
    assert_eq!(shown(&read), alone(&batch));
    assert_eq!(shared.taken(), 6);
    assert_eq!(shared.kept(), 4);
    ahead.plan(&batch[6..], PlanDepth::Full);
    assert_eq!(shared.taken(), 10);
    assert_eq!(shared.kept(), 0);
    // every reader has read them now: nothing is kept for anyone
    behind.plan(&batch[..3], PlanDepth::Full);
    assert_eq!(shared.kept(), 0);
}

#[test]
fn the_store_is_bounded_and_the_others_plan_for_themselves_beyond_it() {
    let shared = SharedPlans::new(3, usize::MAX);
    let (first, second) = (shared.reader(), shared.reader());
    let batch = records(0, 0..10);
    first.plan(&batch, PlanDepth::Full);
    assert_eq!(shared.kept(), 3);
    let read = second.plan(&batch, PlanDepth::Full);
    assert_eq!(shared.taken(), 3);
    assert_eq!(shown(&read), alone(&batch));
    assert_eq!(shared.kept(), 0);
}

#[test]
fn the_store_holds_at_most_its_bytes_of_bodies() {
    let batch = records(0, 0..6);
    let bodies: Vec<usize> = alone_plans(&batch).iter().map(|p| p.body.len()).collect();
    // room for the first three bodies, not the fourth
    let shared = SharedPlans::new(100, bodies[..3].iter().sum::<usize>());
    let (first, second) = (shared.reader(), shared.reader());
    first.plan(&batch, PlanDepth::Full);
    assert_eq!(shared.kept(), 3);
    second.plan(&batch[..2], PlanDepth::Full);
    assert_eq!(shared.taken(), 2);
    // two bodies' room again: the first reader keeps what fits of its next records
    first.plan(&records(0, 6..12), PlanDepth::Full);
    assert!(shared.kept() >= 2, "kept {}", shared.kept());
    let read = second.plan(&records(0, 2..12), PlanDepth::Full);
    assert_eq!(shown(&read), alone(&records(0, 2..12)));
    assert_eq!(shared.kept(), 0);
}

#[test]
fn plans_every_reader_has_read_past_are_dropped() {
    let shared = SharedPlans::new(100, usize::MAX);
    let (slow, fast) = (shared.reader(), shared.reader());
    // `slow` plans 0-9 of partition 1 for `fast`, which then resumes further on (its own
    // stored positions) and never reads them
    slow.plan(&records(1, 0..10), PlanDepth::Full);
    assert_eq!(shared.kept(), 10);
    fast.plan(&records(1, 20..25), PlanDepth::Full);
    // 0-9 are behind both readers now: dropped; 20-24 wait for `slow`
    assert_eq!(shared.kept(), 5);
    // partitions are apart: partition 2 is not dropped by reads of partition 1
    slow.plan(&records(2, 0..4), PlanDepth::Full);
    fast.plan(&records(1, 25..27), PlanDepth::Full);
    assert_eq!(shared.kept(), 5 + 4 + 2);
    assert_eq!(shared.taken(), 0);
}

#[test]
fn only_full_plans_are_shared() {
    let shared = SharedPlans::new(100, usize::MAX);
    let (envelope_only, full) = (shared.reader(), shared.reader());
    let batch = records(0, 0..4);
    let read = envelope_only.plan(&batch, PlanDepth::Envelope);
    assert!(
        read.iter()
            .all(|p| matches!(&p.plan, plan::Plan::Event(e) if e.payloads.is_empty()))
    );
    assert_eq!(shared.kept(), 0);
    let read = full.plan(&batch, PlanDepth::Full);
    assert_eq!(shared.taken(), 0);
    assert_eq!(shown(&read), alone(&batch));
}

#[test]
fn a_record_that_is_not_an_envelope_is_shared_as_the_same_dead_letter() {
    let shared = SharedPlans::new(100, usize::MAX);
    let (first, second) = (shared.reader(), shared.reader());
    let garbage = vec![Consumed {
        position: Position {
            partition: 0,
            offset: 0,
        },
        timestamp_ms: 5,
        record: Record {
            key: None,
            headers: vec![],
            value: bytes::Bytes::from_static(&[0xff, 0xff, 0xff]),
        },
    }];
    first.plan(&garbage, PlanDepth::Full);
    let read = second.plan(&garbage, PlanDepth::Full);
    assert_eq!(shared.taken(), 1);
    assert!(matches!(&read[0].plan, plan::Plan::Dead(_)));
    assert_eq!(shown(&read), alone(&garbage));
}
