//! Appends: a writer thread and a syncer thread in a pipeline (group commit).
//!
//! The writer takes every pending request, frames the records and `write`s them; the syncer
//! takes every batch written so far, calls `fdatasync` once, and only then publishes the
//! batches to readers and acknowledges them. While one sync runs, the writer already writes
//! the next batch, so the next sync covers it. Nothing is acknowledged before the sync that
//! covers it returned.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::{Shared, Span, codec};
use crate::{LogError, Position, Record};

/// Requests taken into one write at most.
const MAX_REQUESTS_PER_WRITE: usize = 4096;

type Reply = oneshot::Sender<Result<Vec<Position>, LogError>>;

pub(super) struct AppendRequest {
    pub(super) records: Vec<Record>,
    pub(super) reply: Reply,
}

/// A batch that is written but not yet synced.
struct Written {
    answers: Vec<(Reply, Vec<Position>)>,
    /// Per partition, the frames of the new records.
    spans: Vec<Vec<Span>>,
}

#[derive(Default)]
struct Pipeline {
    state: Mutex<PipelineState>,
    ready: Condvar,
}

#[derive(Default)]
struct PipelineState {
    written: VecDeque<Written>,
    writer_done: bool,
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    file: File,
) -> Result<mpsc::UnboundedSender<AppendRequest>, LogError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let sync_file = file
        .try_clone()
        .map_err(LogError::io("failed to open the log file for syncing"))?;
    let len = file
        .metadata()
        .map_err(LogError::io("failed to read the log file's length"))?
        .len();
    let pipeline = Arc::new(Pipeline::default());
    let next = shared
        .index
        .iter()
        .map(|i| i.read().expect("index poisoned").len() as u64)
        .collect();
    let writer = Writer {
        shared: Arc::clone(&shared),
        file,
        len,
        next,
        round_robin: 0,
        buffer: Vec::new(),
        pipeline: Arc::clone(&pipeline),
    };
    let syncer = Syncer {
        shared,
        file: sync_file,
        pipeline,
    };
    std::thread::Builder::new()
        .name("embedded-log-sync".into())
        .spawn(move || syncer.run())
        .map_err(LogError::io("failed to start the embedded log syncer"))?;
    std::thread::Builder::new()
        .name("embedded-log-write".into())
        .spawn(move || writer.run(rx))
        .map_err(LogError::io("failed to start the embedded log writer"))?;
    Ok(tx)
}

struct Writer {
    shared: Arc<Shared>,
    file: File,
    /// Bytes written to the file so far.
    len: u64,
    /// Next offset of each partition.
    next: Vec<u64>,
    round_robin: u32,
    buffer: Vec<u8>,
    pipeline: Arc<Pipeline>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<AppendRequest>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_REQUESTS_PER_WRITE {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.write(batch);
        }
        self.pipeline
            .state
            .lock()
            .expect("pipeline poisoned")
            .writer_done = true;
        self.pipeline.ready.notify_one();
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

    fn write(&mut self, batch: Vec<AppendRequest>) {
        if let Some(why) = self
            .shared
            .failed
            .lock()
            .expect("failed flag poisoned")
            .clone()
        {
            for request in batch {
                let _ = request.reply.send(Err(LogError::Unavailable(why.clone())));
            }
            return;
        }
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut next = self.next.clone();
        let mut spans: Vec<Vec<Span>> = vec![Vec::new(); next.len()];
        let mut answers = Vec::with_capacity(batch.len());
        self.buffer.clear();
        for request in batch {
            let mut positions = Vec::with_capacity(request.records.len());
            for record in &request.records {
                let partition = self.partition_of(record.key.as_deref());
                let start = self.buffer.len();
                codec::encode(record, partition as u32, timestamp_ms, &mut self.buffer);
                spans[partition].push(Span {
                    start: self.len + start as u64,
                    len: (self.buffer.len() - start) as u32,
                });
                positions.push(Position {
                    partition: partition as u32,
                    offset: next[partition],
                });
                next[partition] += 1;
            }
            answers.push((request.reply, positions));
        }
        if let Err(e) = self.file.write_all(&self.buffer) {
            let why = format!("failed to append to the embedded log: {e}");
            tracing::error!(error = %why, "embedded log write failed");
            // cut a partial write off, so no frame of the failed batch stays behind
            if self.file.set_len(self.len).is_err() {
                *self.shared.failed.lock().expect("failed flag poisoned") = Some(
                    "the log file could not be repaired after a failed write; restart to recover"
                        .into(),
                );
            }
            for (reply, _) in answers {
                let _ = reply.send(Err(LogError::Unavailable(why.clone())));
            }
            return;
        }
        self.len += self.buffer.len() as u64;
        if self.buffer.capacity() > 8 << 20 {
            self.buffer = Vec::new();
        }
        self.next = next;
        self.pipeline
            .state
            .lock()
            .expect("pipeline poisoned")
            .written
            .push_back(Written { answers, spans });
        self.pipeline.ready.notify_one();
    }
}

struct Syncer {
    shared: Arc<Shared>,
    file: File,
    pipeline: Arc<Pipeline>,
}

impl Syncer {
    fn run(self) {
        loop {
            let batches: Vec<Written> = {
                let mut state = self.pipeline.state.lock().expect("pipeline poisoned");
                while state.written.is_empty() && !state.writer_done {
                    state = self.pipeline.ready.wait(state).expect("pipeline poisoned");
                }
                if state.written.is_empty() {
                    return;
                }
                state.written.drain(..).collect()
            };
            self.sync(batches);
        }
    }

    fn sync(&self, batches: Vec<Written>) {
        if let Err(e) = self.file.sync_data() {
            // after a failed fsync the kernel may have dropped the dirty pages: nothing written
            // since the last good sync can be trusted, so stop taking appends
            let why = format!("fdatasync of the embedded log failed ({e}); restart to recover");
            tracing::error!(error = %why, "embedded log sync failed");
            *self.shared.failed.lock().expect("failed flag poisoned") = Some(why.clone());
            for batch in batches {
                for (reply, _) in batch.answers {
                    let _ = reply.send(Err(LogError::Unavailable(why.clone())));
                }
            }
            return;
        }
        let mut answers = Vec::new();
        for batch in batches {
            for (partition, spans) in batch.spans.into_iter().enumerate() {
                if !spans.is_empty() {
                    self.shared.index[partition]
                        .write()
                        .expect("index poisoned")
                        .extend(spans);
                }
            }
            answers.extend(batch.answers);
        }
        self.shared
            .appended
            .send_modify(|generation| *generation += 1);
        for (reply, positions) in answers {
            // the caller may have gone away (request cancelled); the records are durable anyway
            let _ = reply.send(Ok(positions));
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
