//! Appends: one appender thread doing group commit.
//!
//! The appender takes every pending request, frames the records, `write`s them with one call,
//! calls `fdatasync` once, and only then publishes the records to readers and acknowledges
//! them. Requests that arrive while a sync runs wait in the channel and make the next group,
//! so one sync covers everything that arrived during the previous one; the thread only sleeps
//! (and needs waking) when there is nothing to do. Nothing is acknowledged before the sync
//! that covers it returned.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::{Shared, Span, codec};
use crate::{LogError, Position, Record};

/// Requests taken into one group at most.
const MAX_REQUESTS_PER_GROUP: usize = 4096;
/// Group-commit delay: when the previous group had at least `LINGER_WHEN` requests (there is
/// concurrent load) and this one has fewer than `LINGER_UNTIL`, wait `LINGER` for more before
/// syncing. A lone request (no concurrent load) is synced at once.
const LINGER: Duration = Duration::from_micros(200);
const LINGER_WHEN: usize = 8;
const LINGER_UNTIL: usize = 48;

/// Moves every request already waiting into `group` (up to the group limit).
fn drain(rx: &mpsc::Receiver<AppendRequest>, group: &mut Vec<AppendRequest>) {
    while group.len() < MAX_REQUESTS_PER_GROUP {
        match rx.try_recv() {
            Ok(request) => group.push(request),
            Err(_) => break,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Position>, LogError>>;

pub(super) struct AppendRequest {
    pub(super) records: Vec<Record>,
    pub(super) reply: Reply,
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    file: File,
) -> Result<mpsc::Sender<AppendRequest>, LogError> {
    let (tx, rx) = mpsc::channel();
    let len = file
        .metadata()
        .map_err(LogError::io("failed to read the log file's length"))?
        .len();
    let next = shared
        .index
        .iter()
        .map(|i| i.read().expect("index poisoned").len() as u64)
        .collect();
    let appender = Appender {
        shared,
        file,
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
    file: File,
    /// Bytes written to the file so far.
    len: u64,
    /// Next offset of each partition.
    next: Vec<u64>,
    round_robin: u32,
    buffer: Vec<u8>,
}

impl Appender {
    fn run(mut self, rx: mpsc::Receiver<AppendRequest>) {
        let mut group = Vec::new();
        let mut previous = 0;
        while let Ok(first) = rx.recv() {
            group.push(first);
            drain(&rx, &mut group);
            // under concurrent load, wait a moment for more before paying for a sync: fewer,
            // larger groups (a sync costs the same for 1 request or 60)
            // (a sleep, not a blocking receive: senders then have nobody to wake)
            if previous >= LINGER_WHEN && group.len() < LINGER_UNTIL {
                std::thread::sleep(LINGER);
                drain(&rx, &mut group);
            }
            previous = group.len();
            self.commit(&mut group);
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

    fn fail(group: &mut Vec<AppendRequest>, why: &str) {
        for request in group.drain(..) {
            let _ = request
                .reply
                .send(Err(LogError::Unavailable(why.to_owned())));
        }
    }

    /// Writes, syncs, publishes and acknowledges `group` (emptied).
    fn commit(&mut self, group: &mut Vec<AppendRequest>) {
        if let Some(why) = self
            .shared
            .failed
            .lock()
            .expect("failed flag poisoned")
            .clone()
        {
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
                codec::encode(record, partition as u32, timestamp_ms, &mut self.buffer);
                spans[partition].push(Span {
                    start: self.len + start as u64,
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
            if self.file.set_len(self.len).is_err() {
                *self.shared.failed.lock().expect("failed flag poisoned") = Some(
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
            tracing::error!(error = %why, "embedded log sync failed");
            *self.shared.failed.lock().expect("failed flag poisoned") = Some(why.clone());
            return Self::fail(group, &why);
        }
        self.len += written;
        self.next = next;
        for (partition, spans) in spans.into_iter().enumerate() {
            if !spans.is_empty() {
                self.shared.index[partition]
                    .write()
                    .expect("index poisoned")
                    .extend(spans);
            }
        }
        self.shared
            .appended
            .send_modify(|generation| *generation += 1);
        for (request, positions) in group.drain(..).zip(positions) {
            // the caller may have gone away (request cancelled); the records are durable anyway
            let _ = request.reply.send(Ok(positions));
        }
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
