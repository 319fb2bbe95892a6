//! Appends: one appender thread doing group commit, segment rolls and retention.
//!
//! The appender takes every pending request (up to [`MAX_GROUP_BYTES`]), frames the records,
//! `write`s them with one call, calls `fdatasync` once, and only then publishes the records
//! to readers and acknowledges them. Requests that arrive while a sync runs wait in the
//! channel and make the next group, so one sync covers everything that arrived during the
//! previous one. Nothing is acknowledged before the sync that covers it returned.

use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::codec::{self, FrameMeta};
use super::disk::AppendFile;
use super::index::Active;
use super::{QueueSlot, Shared, Span, consumer, open, segment};
use crate::{LogError, Position, Record};

/// Bytes of records taken into one group at most (one request larger than this is a group
/// of its own).
const MAX_GROUP_BYTES: usize = 32 << 20;
/// Group-commit delay: when the previous group had at least `LINGER_WHEN` requests (there is
/// concurrent load) and this one has fewer than `LINGER_UNTIL`, wait `LINGER` for more before
/// syncing. A lone request (no concurrent load) is synced at once.
const LINGER: Duration = Duration::from_micros(200);
const LINGER_WHEN: usize = 8;
const LINGER_UNTIL: usize = 48;

/// What a record holds of the append queue: its bytes and its share of the frame.
pub(super) fn record_bytes(record: &Record) -> usize {
    64 + record.value.len()
        + record.key.as_ref().map_or(0, |k| k.len())
        + record
            .headers
            .iter()
            .map(|(n, v)| 6 + n.len() + v.len())
            .sum::<usize>()
}

type Reply = oneshot::Sender<Result<Vec<Position>, LogError>>;

pub(super) struct AppendRequest {
    pub(super) records: Vec<Record>,
    pub(super) reply: Reply,
    pub(super) slot: QueueSlot,
}

/// Moves requests already waiting into `group` while it holds less than the group limit.
fn drain(
    rx: &mpsc::Receiver<AppendRequest>,
    group: &mut Vec<AppendRequest>,
    pending: &mut Option<AppendRequest>,
) {
    let mut bytes: usize = group.iter().map(|r| r.slot.bytes).sum();
    while bytes < MAX_GROUP_BYTES {
        let request = match pending.take() {
            Some(request) => request,
            None => match rx.try_recv() {
                Ok(request) => request,
                Err(_) => break,
            },
        };
        if !group.is_empty() && bytes + request.slot.bytes > MAX_GROUP_BYTES {
            *pending = Some(request);
            break;
        }
        bytes += request.slot.bytes;
        group.push(request);
    }
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    file: Box<dyn AppendFile>,
    len: u64,
) -> Result<mpsc::Sender<AppendRequest>, LogError> {
    let (tx, rx) = mpsc::channel();
    let active = shared.index.active();
    let next = (0..active.first.len()).map(|p| active.end(p)).collect();
    let appender = Appender {
        shared,
        file,
        base: active.base,
        len,
        next,
        round_robin: 0,
        buffer: Vec::new(),
    };
    std::thread::Builder::new()
        .name("embedded-log".into())
        .spawn(move || appender.run(rx))
        .map_err(LogError::io("failed to start the embedded log appender"))?;
    Ok(tx)
}

struct Appender {
    shared: Arc<Shared>,
    file: Box<dyn AppendFile>,
    /// The active segment's base and length in bytes.
    base: u64,
    len: u64,
    /// Next offset of each partition.
    next: Vec<u64>,
    round_robin: u32,
    buffer: Vec<u8>,
}

impl Appender {
    fn run(mut self, rx: mpsc::Receiver<AppendRequest>) {
        let mut group = Vec::new();
        let mut pending = None;
        let mut previous = 0;
        loop {
            if pending.is_none() {
                match rx.recv() {
                    Ok(first) => pending = Some(first),
                    Err(_) => return,
                }
            }
            drain(&rx, &mut group, &mut pending);
            // under concurrent load, wait a moment for more before paying for a sync: fewer,
            // larger groups (a sync costs the same for 1 request or 60)
            // (a sleep, not a blocking receive: senders then have nobody to wake)
            if previous >= LINGER_WHEN && group.len() < LINGER_UNTIL && pending.is_none() {
                std::thread::sleep(LINGER);
                drain(&rx, &mut group, &mut pending);
            }
            previous = group.len();
            self.commit(&mut group);
            if self.len >= self.shared.options.segment_bytes {
                self.roll();
            }
        }
    }

    fn partition_of(&mut self, key: Option<&[u8]>) -> usize {
        let partitions = self.next.len() as u32;
        let hash = match key {
            Some(key) => fnv1a(key),
            None => {
                self.round_robin = self.round_robin.wrapping_add(1);
                self.round_robin
            }
        };
        (hash % partitions) as usize
    }

    fn failed(&self) -> Option<String> {
        self.shared
            .failed
            .lock()
            .expect("failed flag poisoned")
            .clone()
    }

    fn set_failed(&self, why: String) {
        tracing::error!(error = %why, "the embedded log stops taking appends");
        *self.shared.failed.lock().expect("failed flag poisoned") = Some(why);
    }

    fn fail(group: &mut Vec<AppendRequest>, why: &str) {
        for request in group.drain(..) {
            let _ = request
                .reply
                .send(Err(LogError::Unavailable(why.to_owned())));
        }
    }

    /// Writes, syncs, publishes and acknowledges `group` (emptied).
    fn commit(&mut self, group: &mut Vec<AppendRequest>) {
        if let Some(why) = self.failed() {
            return Self::fail(group, &why);
        }
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut next = self.next.clone();
        let mut spans: Vec<Vec<Span>> = vec![Vec::new(); next.len()];
        let mut positions = Vec::with_capacity(group.len());
        self.buffer.clear();
        for request in group.iter() {
            let mut these = Vec::with_capacity(request.records.len());
            for record in &request.records {
                let partition = self.partition_of(record.key.as_deref());
                let start = self.buffer.len();
                let meta = FrameMeta {
                    partition: partition as u32,
                    offset: next[partition],
                    group_start: self.len,
                    timestamp_ms,
                };
                codec::encode(record, meta, &mut self.buffer);
                spans[partition].push(Span {
                    start: self.base + self.len + start as u64,
                    len: (self.buffer.len() - start) as u32,
                });
                these.push(Position {
                    partition: partition as u32,
                    offset: next[partition],
                });
                next[partition] += 1;
            }
            positions.push(these);
        }
        if let Err(e) = self.file.write_all(&self.buffer) {
            let why = format!("failed to append to the embedded log: {e}");
            tracing::error!(error = %why, "embedded log write failed");
            // cut a partial write off, so no frame of the failed group stays behind
            if self.file.truncate(self.len).is_err() {
                self.set_failed(
                    "the log file could not be repaired after a failed write; restart to recover"
                        .into(),
                );
            }
            return Self::fail(group, &why);
        }
        let written = self.buffer.len() as u64;
        if self.buffer.capacity() > 8 << 20 {
            self.buffer = Vec::new();
        }
        if let Err(e) = self.file.sync_data() {
            // after a failed fsync the kernel may have dropped the dirty pages: nothing written
            // since the last good sync can be trusted, so stop taking appends
            let why = format!("fdatasync of the embedded log failed ({e}); restart to recover");
            self.set_failed(why.clone());
            return Self::fail(group, &why);
        }
        self.len += written;
        self.next = next;
        self.shared.index.publish(spans, timestamp_ms);
        self.shared
            .appended
            .send_modify(|generation| *generation += 1);
        for (request, positions) in group.drain(..).zip(positions) {
            // the caller may have gone away (request cancelled); the records are durable anyway
            let _ = request.reply.send(Ok(positions));
        }
    }

    /// Seals the active segment (its index written) and starts the next one.
    fn roll(&mut self) {
        if self.failed().is_some() {
            return;
        }
        let segments_dir = self.shared.segments_dir();
        let active = self.shared.index.active();
        let index = open::index_of(
            active.base,
            self.len,
            active.max_timestamp_ms,
            &active.first,
            &active.spans,
        );
        let base = self.base + self.len;
        let disk = self.shared.disk.as_ref();
        let rolled = open::write_index(disk, &segments_dir, &index)
            .and_then(|()| open::create_segment(disk, &segments_dir, base, &self.next))
            .and_then(|()| {
                let path = segments_dir.join(segment::log_name(base));
                disk.open_append(&path)
                    .map_err(LogError::io(format!("failed to open {}", path.display())))
            });
        match rolled {
            Ok(file) => {
                let header_len = codec::segment_header_len(self.next.len() as u32);
                self.file = file;
                self.base = base;
                self.len = header_len;
                self.shared.index.roll(
                    Arc::new(index),
                    Active {
                        base,
                        first: self.next.clone(),
                        spans: vec![Vec::new(); self.next.len()],
                        max_timestamp_ms: 0,
                    },
                );
                apply_retention(&self.shared);
            }
            // the active segment stays active (it only grows past its size; tried again after
            // the next group): what the roll made is taken back, or an index would describe
            // the segment as sealed while records are still added to it
            Err(e) => {
                tracing::error!(error = %e, "failed to seal an embedded log segment");
                let made = [
                    segments_dir.join(segment::index_name(active.base)),
                    segments_dir.join(segment::log_name(base)),
                ];
                let undone = made
                    .iter()
                    .filter(|p| disk.exists(p))
                    .try_for_each(|p| disk.remove(p))
                    .and_then(|()| disk.sync_dir(&segments_dir));
                if let Err(e) = undone {
                    self.set_failed(format!(
                        "a failed segment roll could not be undone ({e}); restart to recover"
                    ));
                }
            }
        }
    }
}

/// Deletes the oldest sealed segments that retention lets go and every consumer group has
/// committed past.
pub(super) fn apply_retention(shared: &Shared) {
    let options = &shared.options;
    if options.retention.is_none() && options.retention_bytes.is_none() {
        return;
    }
    let groups = match consumer::all_committed(shared.disk.as_ref(), &shared.dir) {
        Ok(groups) => groups,
        Err(e) => {
            tracing::warn!(error = %e, "retention skipped: the consumer groups' positions could not be read");
            return;
        }
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let segments_dir = shared.segments_dir();
    loop {
        let sealed = shared.index.sealed();
        let Some(oldest) = sealed.first() else {
            return;
        };
        let total: u64 = sealed.iter().map(|s| s.data_len).sum::<u64>() + options.segment_bytes;
        let too_old = options
            .retention
            .is_some_and(|age| oldest.max_timestamp_ms < now_ms - age.as_millis() as i64);
        let too_big = options.retention_bytes.is_some_and(|max| total > max);
        if !too_old && !too_big {
            return;
        }
        if let Some((group, partition, committed)) = groups.iter().find_map(|(group, next)| {
            (0..oldest.ranges.len()).find_map(|p| {
                let committed = next.get(&(p as u32)).copied().unwrap_or(0);
                (committed < oldest.end(p)).then(|| (group.clone(), p, committed))
            })
        }) {
            tracing::warn!(
                group,
                partition,
                committed,
                segment = segment::log_name(oldest.base),
                "retention holds a segment back: a consumer group has not committed past it"
            );
            return;
        }
        let Some(gone) = shared.index.drop_oldest() else {
            return;
        };
        // the data first: an index without its segment is ignored, a segment without its index
        // would be scanned again
        for name in [segment::log_name(gone.base), segment::index_name(gone.base)] {
            let path = segments_dir.join(name);
            if let Err(e) = shared.disk.remove(&path) {
                tracing::warn!(path = %path.display(), error = %e, "failed to delete a segment past retention");
            }
        }
        if let Err(e) = shared.disk.sync_dir(&segments_dir) {
            tracing::warn!(error = %e, "failed to sync the segments folder");
        }
        tracing::info!(
            segment = segment::log_name(gone.base),
            "deleted a segment past retention"
        );
    }
}

/// FNV-1a: stable across versions and platforms, so a key always maps to the same partition.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}
