//! The next batch is read and planned while the current one is written. What must hold: every
//! record is written once, in log order per partition, whatever arrives during a write; and
//! when the sink answers that its positions are behind while a batch was read ahead, the
//! runner reads again from them, so nothing is skipped and nothing is written twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use terra_projector::plan::Planned;
use terra_projector::{
    CancellationToken, ProjectorConfig, ProjectorMetrics, Sink, SinkError, WriteStats,
};
use terra_testkit::{TestLog, fixture, record};

/// What the sink holds: the positions it has written (partition → offsets, in the order
/// written) and its stored next position per partition, like the SQL sink's.
#[derive(Default)]
struct Table {
    rows: BTreeMap<u32, Vec<u64>>,
    next: BTreeMap<u32, u64>,
    writes: usize,
}

/// A sink storing its positions with its rows. Each write takes `write_time` (records
/// arrive meanwhile). With `rewind_at = Some(n)`, its n-th write first loses everything (an
/// older copy of its tables swapped in), so that write, read ahead, starts after what the
/// sink holds.
struct Positioned {
    table: Arc<Mutex<Table>>,
    write_time: Duration,
    rewind_at: Option<usize>,
}

impl Sink for Positioned {
    fn name(&self) -> &str {
        "positioned"
    }

    async fn stored_positions(&mut self) -> Result<Option<BTreeMap<u32, u64>>, SinkError> {
        Ok(Some(self.table.lock().unwrap().next.clone()))
    }

    async fn write(&mut self, batch: &[Planned]) -> Result<WriteStats, SinkError> {
        tokio::time::sleep(self.write_time).await;
        let mut table = self.table.lock().unwrap();
        table.writes += 1;
        if self.rewind_at == Some(table.writes) {
            table.rows.clear();
            table.next.clear();
        }
        // checked before anything is applied: a refused batch changes nothing (a rolled
        // back transaction)
        let mut started = std::collections::HashSet::new();
        for planned in batch {
            let p = planned.position;
            let next = table.next.get(&p.partition).copied().unwrap_or(0);
            if p.offset >= next && started.insert(p.partition) && p.offset > next {
                return Err(SinkError::Behind(table.next.clone()));
            }
        }
        let mut stats = WriteStats::default();
        for planned in batch {
            let p = planned.position;
            let next = table.next.get(&p.partition).copied().unwrap_or(0);
            if p.offset < next {
                stats.replayed += 1;
                continue;
            }
            table.rows.entry(p.partition).or_default().push(p.offset);
            table.next.insert(p.partition, p.offset + 1);
            stats.records += 1;
        }
        Ok(stats)
    }
}

/// Appends `groups` groups of `per_group` records `gap` apart while a projector with `sink`
/// runs; waits until the sink holds them all and returns what it holds.
async fn project_while_appending(
    sink: Positioned,
    groups: i64,
    per_group: i64,
    gap: Duration,
) -> BTreeMap<u32, Vec<u64>> {
    let table = Arc::clone(&sink.table);
    let log = TestLog::new();
    let mut config = ProjectorConfig::new("positioned");
    config.batch_wait = Duration::from_millis(20);
    let shutdown = CancellationToken::new();
    let runner = {
        let (log, shutdown) = (log.log.clone(), shutdown.clone());
        let mut sink = sink;
        tokio::spawn(async move {
            let metrics = ProjectorMetrics::unregistered();
            terra_projector::run(&config, &log, &mut sink, &metrics, shutdown, |_| {}).await
        })
    };
    let body = fixture("sleep");
    let mut appended: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for g in 0..groups {
        let records = (0..per_group)
            .map(|i| record(&body, None, 1_780_000_000 + g * 1_000 + i, None))
            .collect();
        for position in log.append(records).await {
            appended
                .entry(position.partition)
                .or_default()
                .push(position.offset);
        }
        tokio::time::sleep(gap).await;
    }
    let total = (groups * per_group) as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let held: usize = table.lock().unwrap().rows.values().map(Vec::len).sum();
        if held >= total {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sink holds {held} of {total} records"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // a little longer: a record written twice would show up now
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    runner.await.unwrap().unwrap();
    for offsets in appended.values_mut() {
        offsets.sort_unstable();
    }
    let held = table.lock().unwrap().rows.clone();
    assert_eq!(
        held, appended,
        "each record once, in log order per partition"
    );
    held
}

#[tokio::test]
async fn records_arriving_during_slow_writes_are_each_written_once_in_log_order() {
    let sink = Positioned {
        table: Arc::default(),
        write_time: Duration::from_millis(60),
        rewind_at: None,
    };
    project_while_appending(sink, 12, 25, Duration::from_millis(15)).await;
}

#[tokio::test]
async fn a_sink_found_behind_while_a_batch_was_read_ahead_still_gets_every_record_once() {
    let table: Arc<Mutex<Table>> = Arc::default();
    let sink = Positioned {
        table: Arc::clone(&table),
        write_time: Duration::from_millis(60),
        rewind_at: Some(2),
    };
    project_while_appending(sink, 12, 25, Duration::from_millis(15)).await;
    // the second write was refused as behind, and the records were written again from the
    // start: more writes than without the rewind would need, and still each record once
    assert!(table.lock().unwrap().writes >= 3);
}
