//! Reading: frames near each other in a segment go in one read (`consumer::runs`); what a
//! consumer gets is the same as frame by frame, damage included.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use bytes::Bytes;

use super::consumer::{RUN_BYTES, RUN_GAP, runs};
use super::tests::{first_segment, read_all};
use super::*;

fn span(start: u64, len: u32) -> Option<Span> {
    Some(Span { start, len })
}

#[test]
fn runs_join_frames_by_position_within_the_gap_and_the_size() {
    let gap = RUN_GAP;
    let spans = [
        span(1_000, 100),
        None, // a record repair could not keep: nothing to read
        span(0, 1_000),
        span(1_100 + gap, 10),         // just within the gap: joins
        span(1_110 + 2 * gap + 1, 10), // one byte past it: a new run
        span(10 * RUN_BYTES, RUN_BYTES as u32 * 2), // larger than a run: alone
        span(12 * RUN_BYTES, 1),       // after it: a new run
        span(12 * RUN_BYTES + 1, RUN_BYTES as u32), // would pass the run's size: a new run
    ];
    let indexes: Vec<Vec<usize>> = runs(&spans)
        .iter()
        .map(|run| run.iter().map(|&(i, _)| i).collect())
        .collect();
    assert_eq!(
        indexes,
        vec![vec![2, 0, 3], vec![4], vec![5], vec![6], vec![7]]
    );
    assert!(runs(&[None, None]).is_empty());
}

/// Values of 1 byte to 600 KiB (larger than a run) over 3 partitions and small segments.
#[tokio::test]
async fn every_record_reads_back_whatever_its_size_and_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        segment_bytes: 1 << 20,
        ..EmbeddedOptions::default()
    };
    let log = EmbeddedLog::open_with(dir.path(), 3, options).unwrap();
    let mut expected = BTreeMap::new();
    for n in 0..400usize {
        let size = match n % 50 {
            0 => 600 << 10,
            7 => RUN_BYTES as usize - 1,
            _ => 1 + n * 37 % 5_000,
        };
        let value = Bytes::from(vec![b'a' + (n % 26) as u8; size]);
        let record = Record {
            key: Some(Bytes::from(format!("user-{}", n % 7))),
            headers: vec![("n".into(), Bytes::from(n.to_string()))],
            value: value.clone(),
        };
        let positions = log.append(vec![record]).await.unwrap();
        expected.insert(positions[0], value);
    }
    assert!(log.segment_count() > 3, "{}", log.segment_count());
    let partitions: std::collections::BTreeSet<u32> =
        expected.keys().map(|p| p.partition).collect();
    assert_eq!(partitions.len(), 3);
    assert_eq!(read_all(&log, "all").await, expected);
    // in small polls too (runs cut by the poll's size)
    let mut consumer = log.consumer("small").unwrap();
    let mut read = BTreeMap::new();
    loop {
        let batch = consumer.poll(7, Duration::from_millis(50)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        read.extend(batch.into_iter().map(|c| (c.position, c.record.value)));
    }
    assert_eq!(read, expected);
}

/// Everything a consumer reads until the first error, in polls of `max`.
async fn read_until_error(log: &EmbeddedLog, group: &str, max: usize) -> (Vec<Bytes>, LogError) {
    let mut consumer = log.consumer(group).unwrap();
    let mut read = Vec::new();
    loop {
        match consumer.poll(max, Duration::from_millis(50)).await {
            Ok(batch) if batch.is_empty() => panic!("the damage was never noticed"),
            Ok(batch) => read.extend(batch.into_iter().map(|c| c.record.value)),
            Err(err) => return (read, err),
        }
    }
}

/// A segment cut short on disk: a read of several frames that passes its end fails, and the
/// frames before the cut are still returned (read again one by one), then the error, as frame
/// by frame.
#[tokio::test]
async fn a_segment_cut_short_gives_every_record_before_the_cut_then_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        segment_bytes: 64 << 10,
        ..EmbeddedOptions::default()
    };
    let log = EmbeddedLog::open_with(dir.path(), 1, options).unwrap();
    for n in 0..200 {
        let value = format!("record-{n:03}-{}", "x".repeat(700));
        log.append(vec![tests::record(&value)]).await.unwrap();
    }
    assert!(log.segment_count() > 2);
    // the first segment (sealed) loses its last 5,000 bytes under the running log (opening
    // would refuse it)
    let path = first_segment(dir.path());
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 5_000)
        .unwrap();
    let (one_by_one, err_one) = read_until_error(&log, "one", 1).await;
    let (in_runs, err_runs) = read_until_error(&log, "runs", 1_000).await;
    assert!(one_by_one.len() > 30, "{}", one_by_one.len());
    assert_eq!(in_runs, one_by_one);
    assert_eq!(err_runs.to_string(), err_one.to_string());
    assert!(
        err_runs.to_string().contains("failed to read segment"),
        "{err_runs}"
    );
}

/// A poll takes records in the order they were written, whatever their partition: no
/// partition waits behind another's backlog, and the frames read follow each other.
#[tokio::test]
async fn a_poll_takes_the_records_written_first_across_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 3).unwrap();
    let mut written = Vec::new();
    for n in 0..60 {
        let record = Record {
            key: Some(Bytes::from(format!("user-{}", n % 5))),
            headers: Vec::new(),
            value: Bytes::from(format!("record-{n:02}")),
        };
        written.push(log.append(vec![record]).await.unwrap()[0]);
    }
    let mut consumer = log.consumer("g").unwrap();
    let mut read = Vec::new();
    loop {
        let batch = consumer.poll(7, Duration::from_millis(50)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 7);
        read.extend(batch.into_iter().map(|c| c.position));
    }
    assert_eq!(read, written);
}
