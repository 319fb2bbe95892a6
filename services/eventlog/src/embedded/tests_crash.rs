//! `kill -9` in the middle of appends and commits (the process dies; the page cache stays:
//! see `tests_sim.rs` for power cuts).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;

use super::EmbeddedLog;
use crate::{Position, Record};

/// Run by `kill_9_keeps_every_acknowledged_append` in a child process: appends and commits
/// forever, printing what was acknowledged, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of kill_9_keeps_every_acknowledged_append"]
async fn crash_child() {
    let dir = std::env::var("CRASH_CHILD_DIR").expect("run by the parent test");
    let log = EmbeddedLog::open(Path::new(&dir), 3).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for writer in 0..4 {
        let (log, tx) = (log.clone(), tx.clone());
        tokio::spawn(async move {
            for n in 0u64.. {
                let values: Vec<String> = (0..1 + n % 5)
                    .map(|i| format!("w{writer}-{n}-{i}"))
                    .collect();
                let records = values
                    .iter()
                    .map(|v| Record {
                        key: Some(Bytes::from(format!("user-{}", n % 11))),
                        headers: vec![("h".into(), Bytes::from_static(b"v"))],
                        value: Bytes::from(v.clone()),
                    })
                    .collect();
                let positions = log.append(records).await.unwrap();
                for (v, p) in values.iter().zip(positions) {
                    tx.send(format!("ACK {} {} {v}", p.partition, p.offset))
                        .unwrap();
                }
            }
        });
    }
    let committer = {
        let log = log.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut consumer = log.consumer("crash").unwrap();
            loop {
                let batch = consumer.poll(7, Duration::from_secs(1)).await.unwrap();
                let positions: Vec<_> = batch.iter().map(|c| c.position).collect();
                consumer.commit(&positions).unwrap();
                for p in positions {
                    tx.send(format!("COMMIT {} {}", p.partition, p.offset))
                        .unwrap();
                }
            }
        })
    };
    let mut out = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }
    committer.await.unwrap();
}

#[tokio::test]
async fn kill_9_keeps_every_acknowledged_append_and_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "embedded::tests_crash::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("CRASH_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked.len() < 3_000 {
        let line = lines.next().expect("child stopped early").unwrap();
        let parts: Vec<&str> = line.split(' ').collect();
        if !matches!(parts[0], "ACK" | "COMMIT") {
            continue; // the test harness's own output
        }
        let (partition, offset): (u32, u64) =
            (parts[1].parse().unwrap(), parts[2].parse().unwrap());
        match parts[0] {
            "ACK" => acked.push((Position { partition, offset }, parts[3].to_owned())),
            "COMMIT" => {
                let next = committed.entry(partition).or_insert(0);
                *next = (*next).max(offset + 1);
            }
            _ => {}
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush
    child.wait().unwrap();

    let log = EmbeddedLog::open(dir.path(), 3).unwrap();
    let ends = log.end_offsets();
    let mut consumer = log.consumer("verify").unwrap();
    let mut stored = std::collections::HashMap::new();
    loop {
        let batch = consumer
            .poll(10_000, Duration::from_millis(200))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for c in batch {
            stored.insert(c.position, c.record.value);
        }
    }
    assert_eq!(stored.len() as u64, ends.iter().sum::<u64>());
    for (position, value) in &acked {
        let got = stored
            .get(position)
            .unwrap_or_else(|| panic!("acknowledged {position:?} lost"));
        assert_eq!(got.as_ref(), value.as_bytes(), "{position:?}");
    }
    let after = log.committed("crash").unwrap();
    for (partition, next) in committed {
        assert!(
            after.get(&partition).copied().unwrap_or(0) >= next,
            "commit of partition {partition} lost"
        );
    }
}
