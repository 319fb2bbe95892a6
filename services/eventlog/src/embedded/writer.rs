//! The single writer thread: group commit of every pending append.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::{Shared, codec};
use crate::{LogError, Position, Record};

/// Requests taken into one group commit at most.
const MAX_REQUESTS_PER_COMMIT: usize = 4096;

pub(super) struct AppendRequest {
    pub(super) records: Vec<Record>,
    pub(super) reply: oneshot::Sender<Result<Vec<Position>, LogError>>,
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    files: Vec<File>,
) -> Result<mpsc::UnboundedSender<AppendRequest>, LogError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let lens = shared
        .ends
        .iter()
        .map(|e| {
            e.read()
                .expect("index poisoned")
                .last()
                .copied()
                .unwrap_or(0)
        })
        .collect();
    let writer = Writer {
        shared,
        files,
        lens,
        round_robin: 0,
        buffers: Vec::new(),
    };
    std::thread::Builder::new()
        .name("embedded-log-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(LogError::io("failed to start the embedded log writer"))?;
    Ok(tx)
}

struct Writer {
    shared: Arc<Shared>,
    files: Vec<File>,
    /// Byte length of each partition file.
    lens: Vec<u64>,
    round_robin: u32,
    buffers: Vec<Vec<u8>>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<AppendRequest>) {
        self.buffers = vec![Vec::new(); self.files.len()];
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_REQUESTS_PER_COMMIT {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn partition_of(&mut self, key: Option<&[u8]>) -> usize {
        let partitions = self.files.len() as u32;
        let hash = match key {
            Some(key) => fnv1a(key),
            None => {
                self.round_robin = self.round_robin.wrapping_add(1);
                self.round_robin
            }
        };
        (hash % partitions) as usize
    }

    fn commit(&mut self, batch: Vec<AppendRequest>) {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut next: Vec<u64> = self
            .shared
            .ends
            .iter()
            .map(|e| e.read().expect("index poisoned").len() as u64)
            .collect();
        let mut new_ends: Vec<Vec<u64>> = vec![Vec::new(); self.files.len()];
        let mut answers = Vec::with_capacity(batch.len());
        for request in batch {
            let mut positions = Vec::with_capacity(request.records.len());
            for record in &request.records {
                let partition = self.partition_of(record.key.as_deref());
                codec::encode(record, timestamp_ms, &mut self.buffers[partition]);
                let end = self.lens[partition] + self.buffers[partition].len() as u64;
                new_ends[partition].push(end);
                positions.push(Position {
                    partition: partition as u32,
                    offset: next[partition],
                });
                next[partition] += 1;
            }
            answers.push((request.reply, positions));
        }
        if let Err(err) = self.write_and_sync() {
            let why = err.to_string();
            tracing::error!(error = %why, "embedded log append failed");
            for (reply, _) in answers {
                let _ = reply.send(Err(LogError::Unavailable(why.clone())));
            }
            return;
        }
        for (partition, ends) in new_ends.into_iter().enumerate() {
            if let Some(&end) = ends.last() {
                self.lens[partition] = end;
                self.shared.ends[partition]
                    .write()
                    .expect("index poisoned")
                    .extend(ends);
            }
        }
        self.shared
            .appended
            .send_modify(|generation| *generation += 1);
        for (reply, positions) in answers {
            // the caller may have gone away (request cancelled); the records are durable anyway
            let _ = reply.send(Ok(positions));
        }
    }

    /// Writes every buffered frame and syncs each touched file. On failure, cuts the files
    /// back to their previous lengths so no unacknowledged frame stays visible; when even that
    /// fails, the log marks itself failed and refuses appends.
    fn write_and_sync(&mut self) -> Result<(), LogError> {
        let mut result = Ok(());
        for (partition, buffer) in self.buffers.iter().enumerate() {
            if buffer.is_empty() {
                continue;
            }
            let file = &mut self.files[partition];
            let written = file.write_all(buffer).and_then(|()| file.sync_data());
            if let Err(e) = written {
                result = Err(LogError::io(format!(
                    "failed to append to partition {partition}"
                ))(e));
                break;
            }
        }
        if result.is_err() {
            for (partition, buffer) in self.buffers.iter().enumerate() {
                if buffer.is_empty() {
                    continue;
                }
                let undo = self.files[partition]
                    .set_len(self.lens[partition])
                    .and_then(|()| self.files[partition].sync_data());
                if undo.is_err() {
                    *self.shared.failed.lock().expect("failed flag poisoned") = Some(format!(
                        "partition {partition} could not be repaired after a failed write; restart to recover"
                    ));
                }
            }
        }
        for buffer in &mut self.buffers {
            buffer.clear();
            if buffer.capacity() > 4 << 20 {
                buffer.shrink_to(1 << 20);
            }
        }
        result
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
