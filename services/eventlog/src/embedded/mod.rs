//! The embedded log: durable append-only files on local disk, for one node.
//!
//! Layout of the folder:
//! ```text
//! LOCK                 held (flock) by the one process that has the log open
//! meta.json            {"partitions": N}, fixed when the log is created
//! records.log          every partition's framed records, interleaved (see `codec`)
//! groups/<group>.json  committed positions of a consumer group, replaced atomically
//! ```
//! The folders are 0700 and the files 0600 (see [`crate::private_fs`]).
//! One file for all partitions, so a group commit costs one `fdatasync` however many
//! partitions it touches (four files cost four journal flushes here). Partitions are kept
//! apart by an in-memory index rebuilt on open. Appends go through one appender thread
//! (`writer`: write a group, `fdatasync` it, publish, answer) and are answered only after the
//! sync that covers them. On open, a
//! torn tail left by a crash (never acknowledged) is cut off at the last intact frame.

mod codec;
mod consumer;
mod writer;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use terra_runtime::Backoff;

use tokio::sync::{oneshot, watch};

pub use consumer::EmbeddedConsumer;

use crate::{LogError, Position, Record, private_fs};

/// A handle to an open embedded log; clones share it.
#[derive(Clone)]
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    requests: std::sync::mpsc::Sender<writer::AppendRequest>,
}

/// Where one record's frame sits in `records.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    start: u64,
    len: u32,
}

pub(crate) struct Shared {
    dir: PathBuf,
    /// Per partition, the frame of each durable record: offset `i` is `index[p][i]`.
    index: Vec<RwLock<Vec<Span>>>,
    /// Bumped after every durable batch; consumers wait on it.
    appended: watch::Sender<u64>,
    /// Set when a write failed and could not be undone: the log refuses appends from then on.
    failed: Mutex<Option<String>>,
    _lock: File,
}

impl EmbeddedLog {
    /// Opens (creating when missing) the log in `dir`. `partitions` applies to a new log; an
    /// existing log keeps the count it was created with.
    pub fn open(dir: &Path, partitions: u32) -> Result<Self, LogError> {
        private_fs::create_dir_all(&dir.join("groups"))
            .map_err(LogError::io(format!("failed to create {}", dir.display())))?;
        // a log made by an earlier version: its folder (which closes everything in it) and
        // its files
        for path in [dir.to_owned(), dir.join("groups")] {
            private_fs::tighten_and_warn(&path);
        }
        let lock = private_fs::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(LogError::io("failed to open the log's LOCK file"))?;
        lock_with_grace(&lock).map_err(|_| {
            LogError::Unavailable(format!(
                "the embedded log in {} is open in another process",
                dir.display()
            ))
        })?;
        for name in ["LOCK", "meta.json", "records.log"] {
            private_fs::tighten_and_warn(&dir.join(name));
        }
        let partitions = read_or_create_meta(dir, partitions)?;
        let (file, index) = codec::recover(&records_path(dir), partitions)?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            index: index.into_iter().map(RwLock::new).collect(),
            appended: watch::Sender::new(0),
            failed: Mutex::new(None),
            _lock: lock,
        });
        let requests = writer::spawn(Arc::clone(&shared), file)?;
        Ok(Self { shared, requests })
    }

    pub fn partitions(&self) -> u32 {
        self.shared.index.len() as u32
    }

    pub(crate) async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>, LogError> {
        self.check_ready()?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(writer::AppendRequest { records, reply })
            .map_err(|_| LogError::Unavailable("embedded log writer stopped".into()))?;
        answer
            .await
            .map_err(|_| LogError::Unavailable("embedded log writer stopped".into()))?
    }

    pub(crate) fn check_ready(&self) -> Result<(), LogError> {
        match &*self.shared.failed.lock().expect("failed flag poisoned") {
            Some(why) => Err(LogError::Unavailable(why.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn consumer(&self, group: &str) -> Result<EmbeddedConsumer, LogError> {
        EmbeddedConsumer::new(Arc::clone(&self.shared), group)
    }

    /// Number of records in each partition (the next offset to be written).
    pub fn end_offsets(&self) -> Vec<u64> {
        self.shared
            .index
            .iter()
            .map(|e| e.read().expect("index poisoned").len() as u64)
            .collect()
    }

    /// The committed positions of `group`: partition → next offset to read.
    pub fn committed(&self, group: &str) -> Result<BTreeMap<u32, u64>, LogError> {
        consumer::read_committed(&self.shared.dir, group)
    }
}

/// Takes the folder's lock, waiting briefly: a predecessor that is shutting down (a
/// restarted pod, a handle dropped a moment ago) releases it within moments.
fn lock_with_grace(lock: &File) -> Result<(), std::fs::TryLockError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let backoff = Backoff::new(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_millis(100),
    );
    let mut attempt = 0;
    loop {
        match lock.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(backoff.delay(attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn records_path(dir: &Path) -> PathBuf {
    dir.join("records.log")
}

fn read_or_create_meta(dir: &Path, partitions: u32) -> Result<u32, LogError> {
    let path = dir.join("meta.json");
    match fs::read(&path) {
        Ok(bytes) => {
            let meta: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| LogError::Corrupt(format!("{}: {e}", path.display())))?;
            let stored = meta["partitions"]
                .as_u64()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| {
                    LogError::Corrupt(format!("{}: no valid partitions count", path.display()))
                })? as u32;
            if stored != partitions {
                tracing::warn!(
                    stored,
                    requested = partitions,
                    "embedded log keeps the partition count it was created with"
                );
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if partitions == 0 || partitions > 1024 {
                return Err(LogError::Config(
                    "partitions must be between 1 and 1024".into(),
                ));
            }
            write_atomically(
                &path,
                serde_json::json!({ "partitions": partitions })
                    .to_string()
                    .as_bytes(),
            )?;
            Ok(partitions)
        }
        Err(e) => Err(LogError::io(format!("failed to read {}", path.display()))(
            e,
        )),
    }
}

/// Replaces `path` with `contents` so that a crash leaves either the old or the new file
/// (private, see [`private_fs::write_atomically`]).
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), LogError> {
    private_fs::write_atomically(path, contents)
        .map_err(LogError::io(format!("failed to write {}", path.display())))
}

#[cfg(test)]
mod tests;
