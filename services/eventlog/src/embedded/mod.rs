//! The embedded log: durable append-only segment files on local disk, for one node.
//!
//! Layout of the folder:
//! ```text
//! LOCK                   held (flock) by the one process that has the log open
//! meta.json              {"partitions": N}, fixed when the log is created
//! segments/<base>.log    every partition's framed records, interleaved (see `codec`);
//!                        the last one is active, the others sealed
//! segments/<base>.idx    a sealed segment's index (see `segment`)
//! groups/<group>.json    committed positions of a consumer group, replaced atomically
//! ```
//! The folders are 0700 and the files 0600 (see [`crate::private_fs`]).
//!
//! One active file for all partitions, so a group commit costs one `fdatasync` however many
//! partitions it touches. Appends go through one appender thread (`writer`: write a group,
//! `fdatasync` it, publish, answer) and are answered only after the sync that covers them;
//! the bytes waiting for it are bounded ([`EmbeddedOptions::max_queued_bytes`]: a full
//! queue is refused at once). The active segment is sealed (its index written) once it
//! reaches [`EmbeddedOptions::segment_bytes`]; opening reads the sealed indexes' headers and
//! scans only the active segment.
//!
//! On open, a torn tail left by a crash (the last group commit, never acknowledged) is cut
//! off. Damage anywhere else is refused with an error naming the byte and the record after
//! it; the files are kept, and [`repair`] keeps every intact record (offsets never move).
//! Retention ([`EmbeddedOptions::retention`], `retention_bytes`; off by default: the log is
//! the source of truth) deletes whole sealed segments, never one holding a record some
//! consumer group has not committed.

mod codec;
mod consumer;
pub mod disk;
mod index;
mod migrate;
mod open;
mod repair;
mod segment;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

pub use consumer::EmbeddedConsumer;
pub use repair::{RepairReport, repair, repair_on};

use crate::{LogError, Position, Record};
use disk::{Disk, OsDisk};
use index::Index;

/// The largest record the embedded log takes (its frame limit, less the frame's own fields).
pub const MAX_RECORD_BYTES: usize = codec::MAX_FRAME - 64;

/// The largest `segment_bytes` (2 GiB).
pub const MAX_SEGMENT_BYTES: u64 = 2 << 30;

/// Settings of an embedded log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// The active segment is sealed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
    /// Sealed segments whose newest record is older than this are deleted (once every
    /// consumer group has committed past them). `None`: kept for ever.
    pub retention: Option<Duration>,
    /// The oldest sealed segments are deleted while the log is larger than this (same rule).
    pub retention_bytes: Option<u64>,
    /// Bytes of records waiting to be written; an append that would pass it is refused at
    /// once ([`LogError::Unavailable`], 503 at the ingress).
    pub max_queued_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 256 << 20,
            retention: None,
            retention_bytes: None,
            max_queued_bytes: 256 << 20,
        }
    }
}

/// A handle to an open embedded log; clones share it.
#[derive(Clone)]
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    requests: std::sync::mpsc::Sender<writer::AppendRequest>,
}

/// Where one record's frame sits: its global position (segment base + byte in the segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    start: u64,
    len: u32,
}

pub(crate) struct Shared {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    options: EmbeddedOptions,
    index: Index,
    /// Bumped after every durable batch; consumers wait on it.
    appended: watch::Sender<u64>,
    /// Set when a write failed and could not be undone: the log refuses appends from then on.
    failed: Mutex<Option<String>>,
    /// Bytes of records accepted by `append` and not yet answered.
    queued: AtomicUsize,
    _lock: Box<dyn Send + Sync>,
}

impl Shared {
    fn segments_dir(&self) -> PathBuf {
        self.dir.join("segments")
    }
}

/// What an append holds of the queue: released when the appender answered.
pub(crate) struct QueueSlot {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.shared.queued.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl EmbeddedLog {
    /// Opens (creating when missing) the log in `dir` with the default options.
    /// `partitions` applies to a new log; an existing log keeps the count it was created with.
    pub fn open(dir: &Path, partitions: u32) -> Result<Self, LogError> {
        Self::open_with(dir, partitions, EmbeddedOptions::default())
    }

    pub fn open_with(
        dir: &Path,
        partitions: u32,
        options: EmbeddedOptions,
    ) -> Result<Self, LogError> {
        Self::open_on(Arc::new(OsDisk), dir, partitions, options)
    }

    /// Opens the log on `disk` (the simulated disk of the durability tests).
    pub fn open_on(
        disk: Arc<dyn Disk>,
        dir: &Path,
        partitions: u32,
        options: EmbeddedOptions,
    ) -> Result<Self, LogError> {
        // positions inside a segment are 32-bit in its index: a segment stays well under 4 GiB
        // (it may pass segment_bytes by one group, at most 32 MiB plus one record)
        if !(4096..=MAX_SEGMENT_BYTES).contains(&options.segment_bytes) {
            return Err(LogError::Config(format!(
                "embedded log segment_bytes must be between 4096 and {MAX_SEGMENT_BYTES}"
            )));
        }
        let opened = open::open(&disk, dir, partitions, &options)?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            disk,
            options,
            index: opened.index,
            appended: watch::Sender::new(0),
            failed: Mutex::new(None),
            queued: AtomicUsize::new(0),
            _lock: opened.lock,
        });
        writer::apply_retention(&shared);
        let requests = writer::spawn(Arc::clone(&shared), opened.active_file, opened.active_len)?;
        Ok(Self { shared, requests })
    }

    pub fn partitions(&self) -> u32 {
        self.shared.index.partitions()
    }

    pub(crate) async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>, LogError> {
        self.check_ready()?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(big) = records
            .iter()
            .map(writer::record_bytes)
            .find(|b| *b > MAX_RECORD_BYTES)
        {
            return Err(LogError::Config(format!(
                "a record of {big} bytes is larger than the embedded log's largest record \
                 ({MAX_RECORD_BYTES} bytes)"
            )));
        }
        let bytes = records.iter().map(writer::record_bytes).sum::<usize>();
        let max = self.shared.options.max_queued_bytes;
        let before = self.shared.queued.fetch_add(bytes, Ordering::AcqRel);
        let slot = QueueSlot {
            shared: Arc::clone(&self.shared),
            bytes,
        };
        // one request alone may always go (a body under the body limit must be storable)
        if before > 0 && before + bytes > max {
            return Err(LogError::Unavailable(format!(
                "the embedded log's append queue is full ({before} bytes waiting for the disk, \
                 limit {max}); retry shortly"
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(writer::AppendRequest {
                records,
                reply,
                slot,
            })
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
        self.shared.index.end_offsets()
    }

    /// The first offset still stored in each partition (above 0 once retention deleted
    /// segments).
    pub fn start_offsets(&self) -> Vec<u64> {
        self.shared.index.start_offsets()
    }

    /// Number of segment files (sealed and active).
    pub fn segment_count(&self) -> usize {
        self.shared.index.segment_count()
    }

    /// The committed positions of `group`: partition → next offset to read.
    pub fn committed(&self, group: &str) -> Result<BTreeMap<u32, u64>, LogError> {
        consumer::read_committed(self.shared.disk.as_ref(), &self.shared.dir, group)
    }
}

/// Replaces `path` with `contents` so that a crash leaves either the old or the new file.
pub(crate) fn write_atomically(
    disk: &dyn Disk,
    path: &Path,
    contents: &[u8],
) -> Result<(), LogError> {
    disk.write_atomically(path, contents)
        .map_err(LogError::io(format!("failed to write {}", path.display())))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_crash;
#[cfg(test)]
mod tests_read;
#[cfg(test)]
mod tests_sim;
