//! The embedded log on the real file system: files, modes, torn tails and damage, repair,
//! the lock, the old format. The simulated power cuts, backpressure, segments and retention
//! are in `tests_sim.rs`; `kill -9` in `tests_crash.rs`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;

use super::*;

pub(super) fn record(value: &str) -> Record {
    Record {
        key: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: vec![("h".into(), Bytes::from_static(b"v"))],
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

pub(super) fn first_segment(dir: &Path) -> PathBuf {
    dir.join("segments").join(segment::log_name(0))
}

/// Every record the log holds, with its position (a fresh group reads them all).
pub(super) async fn read_all(log: &EmbeddedLog, group: &str) -> BTreeMap<Position, Bytes> {
    let mut consumer = log.consumer(group).unwrap();
    let mut all = BTreeMap::new();
    loop {
        let batch = consumer
            .poll(100_000, Duration::from_millis(100))
            .await
            .unwrap();
        if batch.is_empty() {
            return all;
        }
        for c in batch {
            assert!(all.insert(c.position, c.record.value).is_none());
        }
    }
}

/// 40 records in 40 group commits, over 3 partitions; their positions and values.
async fn forty(log: &EmbeddedLog) -> BTreeMap<Position, Bytes> {
    let mut expected = BTreeMap::new();
    for n in 0..40 {
        let value = format!("webhook-{n:02}");
        let positions = log.append(vec![record(&value)]).await.unwrap();
        expected.insert(positions[0], Bytes::from(value));
    }
    expected
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
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(first_segment(dir.path()))
        .unwrap();
    file.write_all(&[60, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
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
    let values: Vec<_> = read_all(&log, "g").await.into_values().collect();
    assert_eq!(values, [&b"one"[..], b"two", b"three"]);
}

#[tokio::test]
async fn a_torn_group_whose_first_page_never_reached_the_disk_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 2).unwrap();
    log.append(vec![record("kept")]).await.unwrap();
    let len = fs::metadata(first_segment(dir.path())).unwrap().len();
    // the next group: two frames written, then its first page lost to the crash (zeros)
    log.append(vec![record("a"), record("b")]).await.unwrap();
    drop(log);
    let path = first_segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let first_frame = u32::from_le_bytes(bytes[len as usize..len as usize + 4].try_into().unwrap());
    bytes[len as usize..len as usize + 8 + first_frame as usize].fill(0);
    fs::write(&path, &bytes).unwrap();
    let log = EmbeddedLog::open(dir.path(), 2).unwrap();
    let values: Vec<_> = read_all(&log, "g").await.into_values().collect();
    assert_eq!(values, [&b"kept"[..]]);
    assert_eq!(fs::metadata(&path).unwrap().len(), len);
}

#[tokio::test]
async fn damage_in_the_middle_is_refused_with_the_byte_and_the_file_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 3).unwrap();
    forty(&log).await;
    drop(log);
    // one byte flipped a quarter into the file: 30 acknowledged records follow it
    let path = first_segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() / 4;
    bytes[at] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    let err = EmbeddedLog::open(dir.path(), 3).err().expect("refused");
    let text = err.to_string();
    assert!(matches!(err, LogError::Corrupt(_)), "{text}");
    assert!(text.contains("is damaged at byte"), "{text}");
    assert!(text.contains("log repair"), "{text}");
    assert!(text.contains("not a write torn by a crash"), "{text}");
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "the file must be kept as it is"
    );
}

#[tokio::test]
async fn a_flipped_bit_in_the_last_record_is_damage_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    log.append(vec![record("first")]).await.unwrap();
    log.append(vec![record("acknowledged and complete")])
        .await
        .unwrap();
    drop(log);
    let path = first_segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let err = EmbeddedLog::open(dir.path(), 1).err().expect("refused");
    assert!(
        err.to_string().contains("the damaged record is complete"),
        "{err}"
    );
}

#[tokio::test]
async fn repair_keeps_every_intact_record_at_its_offset_and_offsets_never_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 3).unwrap();
    let expected = forty(&log).await;
    // a consumer read and committed everything before the damage
    let mut consumer = log.consumer("projector").unwrap();
    let all: Vec<Position> = read_all(&log, "projector").await.into_keys().collect();
    consumer.commit(&all).unwrap();
    let ends_before = log.end_offsets();
    drop((consumer, log));
    let path = first_segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() / 4;
    bytes[at] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let report = repair(dir.path()).unwrap();
    assert_eq!(report.records_kept, 39, "{report:?}");
    assert_eq!(report.repaired.len(), 1);
    assert!(
        dir.path()
            .join("segments/00000000000000000000.log.damaged")
            .exists()
    );
    let log = EmbeddedLog::open(dir.path(), 3).unwrap();
    let kept = read_all(&log, "audit").await;
    assert_eq!(kept.len(), 39);
    for (position, value) in &kept {
        assert_eq!(expected.get(position), Some(value), "{position:?} moved");
    }
    let lost: Vec<_> = expected.keys().filter(|p| !kept.contains_key(p)).collect();
    assert_eq!(lost.len(), 1);
    assert!(
        report
            .lost
            .iter()
            .any(|(p, from, to)| *p == lost[0].partition && (*from..*to).contains(&lost[0].offset)),
        "{report:?} does not name {lost:?}"
    );
    // new records go after everything that was ever written or committed
    let positions = log.append(vec![record("after repair")]).await.unwrap();
    assert!(positions[0].offset >= ends_before[positions[0].partition as usize]);
    assert_eq!(
        log.end_offsets().iter().sum::<u64>(),
        ends_before.iter().sum::<u64>() + 1
    );
}

#[tokio::test]
async fn embedded_log_folders_are_0700_and_files_0600_under_umask_022() {
    use crate::private_fs::testing::{mode, umask_022};
    umask_022();
    let root = tempfile::tempdir().unwrap();
    // the data dir does not exist yet: the log makes it, and its own folders
    let dir = root.path().join("data/log");
    let options = EmbeddedOptions {
        segment_bytes: 4096,
        ..EmbeddedOptions::default()
    };
    let log = EmbeddedLog::open_with(&dir, 2, options).unwrap();
    let mut positions = Vec::new();
    for n in 0..100 {
        let value = format!("health data {n} {}", "h".repeat(100));
        positions.extend(log.append(vec![record(&value)]).await.unwrap());
    }
    assert!(log.segment_count() > 2);
    let mut consumer = log.consumer("g").unwrap();
    consumer.commit(&positions).unwrap();
    for folder in ["data", "data/log", "data/log/groups", "data/log/segments"] {
        assert_eq!(mode(&root.path().join(folder)), 0o700, "{folder}");
    }
    let mut files = vec![
        dir.join("LOCK"),
        dir.join("meta.json"),
        dir.join("groups/g.json"),
    ];
    for entry in fs::read_dir(dir.join("segments")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert!(files.len() > 6);
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
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
    loosen(&dir.join("meta.json"), 0o644).unwrap();
    let log = EmbeddedLog::open(&dir, 1).unwrap();
    assert_eq!(log.end_offsets(), vec![1]);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("groups")), 0o700);
    assert_eq!(mode(&dir.join("meta.json")), 0o600);
}

#[tokio::test]
async fn a_corrupted_frame_is_detected_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    log.append(vec![record("payload")]).await.unwrap();
    // flip a byte of the stored value while the log is open (bit rot under a running reader)
    let path = first_segment(dir.path());
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
    assert!(err.to_string().contains("partition 0 offset 0"), "{err}");
}

/// Run by `a_second_process_cannot_open_the_same_log`: opens the log, says so, waits.
#[test]
#[ignore = "helper process of a_second_process_cannot_open_the_same_log"]
fn lock_child() {
    let dir = std::env::var("LOCK_CHILD_DIR").expect("run by the parent test");
    let _log = EmbeddedLog::open(Path::new(&dir), 2).unwrap();
    println!("OPEN");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_second_process_cannot_open_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "embedded::tests::lock_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("LOCK_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while lines.next().expect("child stopped early").unwrap() != "OPEN" {}
    let err = EmbeddedLog::open(dir.path(), 2).err().unwrap();
    assert!(err.to_string().contains("open in another process"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    // the lock goes with the process
    EmbeddedLog::open(dir.path(), 2).unwrap();
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

/// A version-1 frame (`records.log`: partition, timestamp, record; offsets by order).
fn v1_frame(partition: u32, value: &str, out: &mut Vec<u8>) {
    let mut payload = Vec::new();
    payload.extend_from_slice(&partition.to_le_bytes());
    payload.extend_from_slice(&1_700_000_000_000i64.to_le_bytes());
    payload.extend_from_slice(&1i32.to_le_bytes());
    payload.push(b'k');
    payload.extend_from_slice(&0u16.to_le_bytes());
    payload.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

fn v1_log(dir: &Path, partitions: u32, frames: &[(u32, &str)]) -> Vec<u8> {
    fs::create_dir_all(dir.join("groups")).unwrap();
    fs::write(
        dir.join("meta.json"),
        format!("{{\"partitions\":{partitions}}}"),
    )
    .unwrap();
    let mut bytes = Vec::new();
    for (partition, value) in frames {
        v1_frame(*partition, value, &mut bytes);
    }
    fs::write(dir.join("records.log"), &bytes).unwrap();
    fs::write(dir.join("groups/projector.json"), r#"{"0":1}"#).unwrap();
    bytes
}

#[tokio::test]
async fn a_version_1_log_is_migrated_with_its_offsets_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    v1_log(dir.path(), 2, &[(0, "a"), (1, "b"), (0, "c"), (1, "d")]);
    let log = EmbeddedLog::open(dir.path(), 2).unwrap();
    assert!(!dir.path().join("records.log").exists());
    assert_eq!(log.end_offsets(), vec![2, 2]);
    let all = read_all(&log, "audit").await;
    let at = |partition, offset| all[&Position { partition, offset }].as_ref().to_vec();
    assert_eq!(
        [at(0, 0), at(0, 1), at(1, 0), at(1, 1)],
        [b"a", b"c", b"b", b"d"].map(|v| v.to_vec())
    );
    // the group resumes where it was
    let mut consumer = log.consumer("projector").unwrap();
    let batch = consumer.poll(10, Duration::from_millis(100)).await.unwrap();
    let got: Vec<_> = batch
        .iter()
        .map(|c| (c.position.partition, c.position.offset))
        .collect();
    assert_eq!(
        got.iter().filter(|p| p.0 == 0).copied().collect::<Vec<_>>(),
        [(0, 1)]
    );
}

#[tokio::test]
async fn a_damaged_version_1_log_is_refused_then_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = v1_log(dir.path(), 1, &[(0, "a"), (0, "b"), (0, "c"), (0, "d")]);
    let frame = bytes.len() / 4;
    bytes[frame + 10] ^= 0x10; // inside the second frame
    fs::write(dir.path().join("records.log"), &bytes).unwrap();
    let err = EmbeddedLog::open(dir.path(), 1).err().expect("refused");
    assert!(
        err.to_string().contains("(version 1) is damaged at byte"),
        "{err}"
    );
    assert!(dir.path().join("records.log").exists());
    let report = repair(dir.path()).unwrap();
    assert_eq!(report.records_kept, 3, "{report:?}");
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    let values: Vec<_> = read_all(&log, "audit").await.into_values().collect();
    assert_eq!(values, [&b"a"[..], b"c", b"d"]);
}

#[test]
fn repair_refuses_a_folder_without_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let err = repair(dir.path()).unwrap_err();
    assert!(err.to_string().contains("holds no embedded log"), "{err}");
}
