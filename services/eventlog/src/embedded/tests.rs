use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;

use super::*;

fn record(value: &str) -> Record {
    Record {
        key: Some(Bytes::from_static(b"k")),
        headers: vec![],
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_intact_records_stay() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    log.append(vec![record("one"), record("two")])
        .await
        .unwrap();
    drop(log);
    // a crash in the middle of the next write leaves half a frame behind
    let mut file = OpenOptions::new()
        .append(true)
        .open(records_path(dir.path()))
        .unwrap();
    file.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
    drop(file);
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    assert_eq!(log.end_offsets(), vec![2]);
    let positions = log.append(vec![record("three")]).await.unwrap();
    assert_eq!(
        positions,
        vec![Position {
            partition: 0,
            offset: 2
        }]
    );
    let mut consumer = log.consumer("g").unwrap();
    let got = consumer.poll(10, Duration::from_secs(1)).await.unwrap();
    let values: Vec<_> = got.iter().map(|c| c.record.value.as_ref()).collect();
    assert_eq!(values, [&b"one"[..], b"two", b"three"]);
}

#[tokio::test]
async fn embedded_log_folders_are_0700_and_files_0600_under_umask_022() {
    use crate::private_fs::testing::{mode, umask_022};
    umask_022();
    let root = tempfile::tempdir().unwrap();
    // the data dir does not exist yet: the log makes it, and its own folders
    let dir = root.path().join("data/log");
    let log = EmbeddedLog::open(&dir, 2).unwrap();
    let positions = log.append(vec![record("health data")]).await.unwrap();
    let mut consumer = log.consumer("g").unwrap();
    consumer.commit(&positions).unwrap();
    for folder in ["data", "data/log", "data/log/groups"] {
        assert_eq!(mode(&root.path().join(folder)), 0o700, "{folder}");
    }
    for file in ["LOCK", "meta.json", "records.log", "groups/g.json"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
}

#[tokio::test]
async fn a_log_left_readable_by_an_earlier_version_is_tightened_on_open() {
    use std::os::unix::fs::PermissionsExt;

    use crate::private_fs::testing::mode;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let log = EmbeddedLog::open(&dir, 1).unwrap();
    log.append(vec![record("one")]).await.unwrap();
    drop(log);
    let loosen = |path: &Path, m: u32| fs::set_permissions(path, fs::Permissions::from_mode(m));
    loosen(&dir, 0o755).unwrap();
    loosen(&dir.join("groups"), 0o755).unwrap();
    loosen(&records_path(&dir), 0o644).unwrap();
    loosen(&dir.join("meta.json"), 0o644).unwrap();
    let log = EmbeddedLog::open(&dir, 1).unwrap();
    assert_eq!(log.end_offsets(), vec![1]);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("groups")), 0o700);
    assert_eq!(mode(&records_path(&dir)), 0o600);
    assert_eq!(mode(&dir.join("meta.json")), 0o600);
}

#[tokio::test]
async fn a_corrupted_frame_is_detected_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    log.append(vec![record("payload")]).await.unwrap();
    // flip a byte of the stored value while the log is open (bit rot under a running reader)
    let path = records_path(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let mut consumer = log.consumer("g").unwrap();
    let err = consumer
        .poll(10, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::Corrupt(_)), "{err}");
}

#[test]
fn a_second_process_cannot_open_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let _log = EmbeddedLog::open(dir.path(), 2).unwrap();
    let err = EmbeddedLog::open(dir.path(), 2).err().unwrap();
    assert!(err.to_string().contains("open in another process"), "{err}");
}

#[test]
fn the_partition_count_is_fixed_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedLog::open(dir.path(), 3).unwrap());
    assert_eq!(EmbeddedLog::open(dir.path(), 8).unwrap().partitions(), 3);
    let err = EmbeddedLog::open(tempfile::tempdir().unwrap().path(), 0)
        .err()
        .unwrap();
    assert!(err.to_string().contains("partitions"), "{err}");
}

#[test]
fn group_names_cannot_escape_the_groups_folder() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    for bad in ["../x", "a/b", "", ".hidden", "a b"] {
        let err = log.consumer(bad).err().unwrap();
        assert!(err.to_string().contains("consumer group"), "{bad:?}: {err}");
    }
}

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
            "embedded::tests::crash_child",
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
