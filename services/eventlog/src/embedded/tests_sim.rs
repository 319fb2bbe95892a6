//! The embedded log on the simulated disk (`disk::SimDisk`): power cuts that lose every
//! unsynced byte and name, a slow disk that fills the append queue, segments and retention.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::disk::SimDisk;
use super::tests::{read_all, record};
use super::*;

fn small_segments() -> EmbeddedOptions {
    EmbeddedOptions {
        segment_bytes: 4096,
        ..EmbeddedOptions::default()
    }
}

/// Appends from four writers and commits from a consumer until the disk loses power; returns
/// what was acknowledged (position → value) and committed (partition → next offset).
async fn run_until_power_cut(
    disk: &SimDisk,
    dir: &Path,
) -> (BTreeMap<Position, String>, BTreeMap<u32, u64>) {
    let log = EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 3, small_segments()).unwrap();
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Option<(Position, String)>, Option<Position>)>();
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let (log, tx) = (log.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0u64.. {
                let values: Vec<String> = (0..1 + n % 4)
                    .map(|i| format!("w{writer}-{n}-{i}"))
                    .collect();
                let records = values.iter().map(|v| record(v)).collect();
                let Ok(positions) = log.append(records).await else {
                    return; // the power is gone
                };
                for (v, p) in values.into_iter().zip(positions) {
                    let _ = tx.send((Some((p, v)), None));
                }
            }
        }));
    }
    {
        let (log, tx) = (log.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut consumer = log.consumer("projector").unwrap();
            loop {
                let Ok(batch) = consumer.poll(7, Duration::from_millis(50)).await else {
                    return;
                };
                let positions: Vec<_> = batch.iter().map(|c| c.position).collect();
                if consumer.commit(&positions).is_err() {
                    return;
                }
                for p in positions {
                    let _ = tx.send((None, Some(p)));
                }
            }
        }));
    }
    drop(tx);
    let mut acked = BTreeMap::new();
    let mut committed = BTreeMap::new();
    while acked.len() < 1_500 {
        match rx.recv().await.unwrap() {
            (Some((p, v)), _) => {
                acked.insert(p, v);
            }
            (_, Some(p)) => {
                let next = committed.entry(p.partition).or_insert(0);
                *next = (*next).max(p.offset + 1);
            }
            _ => {}
        }
    }
    disk.crash();
    // answers already on their way were made before the cut (a sync after it fails)
    for task in tasks {
        task.abort();
    }
    while let Ok((ack, commit)) = rx.try_recv() {
        if let Some((p, v)) = ack {
            acked.insert(p, v);
        }
        if let Some(p) = commit {
            let next = committed.entry(p.partition).or_insert(0);
            *next = (*next).max(p.offset + 1);
        }
    }
    (acked, committed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_append_and_commit_survives_a_power_cut() {
    let disk = SimDisk::new();
    let dir = Path::new("/sim/log");
    let (acked, committed) = run_until_power_cut(&disk, dir).await;
    let log = EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 3, small_segments()).unwrap();
    assert!(log.segment_count() > 3, "the run must roll segments");
    let stored = read_all(&log, "audit").await;
    for (position, value) in &acked {
        let got = stored
            .get(position)
            .unwrap_or_else(|| panic!("acknowledged {position:?} lost in the power cut"));
        assert_eq!(got.as_ref(), value.as_bytes(), "{position:?}");
    }
    let after = log.committed("projector").unwrap();
    for (partition, next) in committed {
        assert!(
            after.get(&partition).copied().unwrap_or(0) >= next,
            "commit of partition {partition} lost in the power cut"
        );
    }
}

/// The same run on a disk whose syncs do nothing, as if the log never called `fdatasync`:
/// the power cut then loses acknowledged appends, so the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_syncs_the_power_cut_loses_acknowledged_appends() {
    let disk = SimDisk::new();
    let dir = Path::new("/sim/log");
    // the folders and the first segment exist, then syncs stop
    drop(EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 3, small_segments()).unwrap());
    disk.ignore_syncs();
    let (acked, _) = run_until_power_cut(&disk, dir).await;
    assert!(!acked.is_empty());
    // the log may not even open (segments made without a sync have no header): all lost
    let lost = match EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 3, small_segments()) {
        Ok(log) => {
            let stored = read_all(&log, "audit").await;
            acked.keys().filter(|p| !stored.contains_key(p)).count()
        }
        Err(_) => acked.len(),
    };
    assert!(lost > 0, "no acknowledged append was lost without syncs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_append_queue_is_refused_at_once_and_nothing_queued_is_lost() {
    let disk = SimDisk::new();
    let options = EmbeddedOptions {
        max_queued_bytes: 5_000,
        ..EmbeddedOptions::default()
    };
    let log =
        EmbeddedLog::open_on(Arc::new(disk.clone()), Path::new("/sim/q"), 1, options).unwrap();
    disk.hold_syncs(true);
    let body = "x".repeat(900);
    let first = tokio::spawn({
        let (log, body) = (log.clone(), body.clone());
        async move { log.append(vec![record(&format!("1{body}"))]).await }
    });
    let second = tokio::spawn({
        let (log, body) = (log.clone(), body.clone());
        async move { log.append(vec![record(&format!("2{body}"))]).await }
    });
    // both are queued (one in the stalled sync, one behind it): ~3,750 of 5,000 bytes (a
    // record counts its key, value, headers and 64 bytes of framing)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.shared.queued.load(std::sync::atomic::Ordering::Acquire) < 3_700 {
        assert!(
            std::time::Instant::now() < deadline,
            "the two appends never queued up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = tokio::time::timeout(
        Duration::from_secs(1),
        log.append(vec![record(&format!("3{body}"))]),
    )
    .await
    .expect("a full queue answers at once, without waiting for the disk")
    .unwrap_err();
    assert!(matches!(refused, LogError::Unavailable(_)), "{refused}");
    assert!(
        refused.to_string().contains("append queue is full"),
        "{refused}"
    );
    disk.hold_syncs(false);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    let values: Vec<_> = read_all(&log, "audit").await.into_values().collect();
    assert_eq!(values.len(), 2);
    // the queue is free again
    log.append(vec![record(&format!("4{body}"))]).await.unwrap();
}

#[tokio::test]
async fn one_append_larger_than_the_queue_limit_still_goes_when_alone() {
    let options = EmbeddedOptions {
        max_queued_bytes: 100,
        ..EmbeddedOptions::default()
    };
    let log =
        EmbeddedLog::open_on(Arc::new(SimDisk::new()), Path::new("/sim/big"), 1, options).unwrap();
    log.append(vec![record(&"y".repeat(10_000))]).await.unwrap();
}

#[tokio::test]
async fn sealed_segments_are_not_scanned_on_open_and_records_read_across_segments() {
    let disk = SimDisk::new();
    let dir = Path::new("/sim/seg");
    let log = EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 2, small_segments()).unwrap();
    let mut expected = BTreeMap::new();
    for n in 0..300 {
        let value = format!("record-{n:03}-{}", "z".repeat(n % 50));
        let positions = log.append(vec![record(&value)]).await.unwrap();
        expected.insert(positions[0], bytes::Bytes::from(value));
    }
    let segments = log.segment_count();
    assert!(segments > 5, "{segments}");
    drop(log);
    // damage inside a sealed segment: open does not read it (the index says where records
    // are), so it opens; the damage shows when that record is read
    let second = disk
        .list(&dir.join("segments"))
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .min_by_key(|n| n != &segment::log_name(0))
        .unwrap();
    disk.flip_bit(&dir.join("segments").join(&second), 100);
    let log = EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 2, small_segments()).unwrap();
    assert_eq!(log.segment_count(), segments);
    assert_eq!(log.end_offsets().iter().sum::<u64>(), 300);
    let mut consumer = log.consumer("reader").unwrap();
    let mut read = BTreeMap::new();
    let err = loop {
        match consumer.poll(1_000, Duration::from_millis(50)).await {
            Ok(batch) if batch.is_empty() => panic!("the damage was never noticed"),
            Ok(batch) => read.extend(batch.into_iter().map(|c| (c.position, c.record.value))),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, LogError::Corrupt(_)), "{err}");
    for (position, value) in &read {
        assert_eq!(expected.get(position), Some(value));
    }
}

#[tokio::test]
async fn retention_deletes_only_segments_every_group_has_committed_past() {
    let disk = SimDisk::new();
    let dir = Path::new("/sim/ret");
    let options = EmbeddedOptions {
        segment_bytes: 4096,
        retention_bytes: Some(3 * 4096),
        ..EmbeddedOptions::default()
    };
    let log = EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 2, options.clone()).unwrap();
    let mut fast = log.consumer("fast").unwrap();
    let slow = log.consumer("slow").unwrap();
    for n in 0..300 {
        log.append(vec![record(&format!("r{n:04}-{}", "p".repeat(40)))])
            .await
            .unwrap();
    }
    // `slow` has committed nothing: every segment stays
    assert_eq!(log.start_offsets(), vec![0, 0]);
    let segments = log.segment_count();
    let batch = fast.poll(10_000, Duration::from_millis(100)).await.unwrap();
    fast.commit(&batch.iter().map(|c| c.position).collect::<Vec<_>>())
        .unwrap();
    drop(slow);
    let mut slow = log.consumer("slow").unwrap();
    let batch = slow.poll(150, Duration::from_millis(100)).await.unwrap();
    let slow_done: Vec<Position> = batch.iter().map(|c| c.position).collect();
    slow.commit(&slow_done).unwrap();
    // more appends roll segments, and retention runs
    for n in 0..40 {
        log.append(vec![record(&format!("s{n:04}-{}", "p".repeat(40)))])
            .await
            .unwrap();
    }
    let starts = log.start_offsets();
    assert!(starts.iter().sum::<u64>() > 0, "nothing was deleted");
    assert!(log.segment_count() < segments + 3);
    let committed = log.committed("slow").unwrap();
    for (partition, start) in starts.iter().enumerate() {
        assert!(
            *start <= committed[&(partition as u32)],
            "partition {partition}: a record the slow group has not committed was deleted"
        );
    }
    // the slow group reads on from its commit, missing nothing
    let rest = read_all_of(&mut slow).await;
    let ends = log.end_offsets();
    assert_eq!(
        rest.len() as u64,
        (0..2)
            .map(|p| ends[p] - committed[&(p as u32)])
            .sum::<u64>()
    );
    // a group that wants deleted records is told which ones are gone
    let mut late = log.consumer("late").unwrap();
    let err = late.seek(&BTreeMap::from([(0, 0), (1, 0)])).unwrap_err();
    assert!(matches!(err, LogError::Gone { offset: 0, .. }), "{err}");
    assert!(err.to_string().contains("records 0.."), "{err}");
    // reopening keeps the start
    drop((fast, slow, late, log));
    let log = EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 2, options).unwrap();
    assert_eq!(log.start_offsets(), starts);
}

async fn read_all_of(consumer: &mut EmbeddedConsumer) -> Vec<Position> {
    let mut all = Vec::new();
    loop {
        let batch = consumer
            .poll(10_000, Duration::from_millis(100))
            .await
            .unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch.iter().map(|c| c.position));
    }
}

#[tokio::test]
async fn a_new_segment_survives_a_power_cut_right_after_it_was_made() {
    // the folder's entry for a new segment must be synced, not only the file's bytes
    let disk = SimDisk::new();
    let dir = Path::new("/sim/dir");
    let log = EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 1, small_segments()).unwrap();
    let mut acked = Vec::new();
    while log.segment_count() < 3 {
        let positions = log.append(vec![record(&"d".repeat(500))]).await.unwrap();
        acked.extend(positions);
    }
    disk.crash();
    let log = EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 1, small_segments()).unwrap();
    let stored = read_all(&log, "audit").await;
    for position in acked {
        assert!(stored.contains_key(&position), "{position:?} lost");
    }
}

/// A roll that fails half-way (the index written, the next segment not created) is taken
/// back: records acknowledged after it stay in the segment that is still active, and a power
/// cut then loses none of them.
#[tokio::test]
async fn a_failed_segment_roll_is_undone_and_later_records_survive() {
    let disk = SimDisk::new();
    let dir = Path::new("/sim/roll");
    let log = EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 1, small_segments()).unwrap();
    let mut acked = Vec::new();
    while log.segment_count() < 2 {
        acked.extend(log.append(vec![record(&"r".repeat(300))]).await.unwrap());
    }
    // one file can be made (the index's), not the next segment: the roll fails after the
    // index was written
    disk.limit_creates(Some(1));
    for _ in 0..30 {
        acked.extend(log.append(vec![record(&"s".repeat(300))]).await.unwrap());
    }
    assert_eq!(log.segment_count(), 2, "no roll can have happened");
    disk.limit_creates(None);
    disk.crash();
    let log = EmbeddedLog::open_on(Arc::new(disk.clone()), dir, 1, small_segments()).unwrap();
    let stored = read_all(&log, "audit").await;
    for position in &acked {
        assert!(
            stored.contains_key(position),
            "{position:?} lost after a failed roll"
        );
    }
    assert_eq!(stored.len(), acked.len());
}

#[tokio::test]
async fn a_record_larger_than_the_largest_frame_is_refused() {
    let log = EmbeddedLog::open_on(
        Arc::new(SimDisk::new()),
        Path::new("/sim/huge"),
        1,
        EmbeddedOptions::default(),
    )
    .unwrap();
    let huge = Record {
        key: None,
        headers: vec![],
        value: bytes::Bytes::from(vec![b'x'; MAX_RECORD_BYTES + 1]),
    };
    let err = log.append(vec![huge]).await.unwrap_err();
    assert!(matches!(err, LogError::Config(_)), "{err}");
    assert!(
        err.to_string()
            .contains("larger than the embedded log's largest record"),
        "{err}"
    );
    assert_eq!(log.end_offsets(), vec![0]);
}
