//! Consumer groups over the embedded log: read positions per partition, commits in
//! `groups/<group>.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::watch;

use super::{Shared, Span, codec, records_path, write_atomically};
use crate::{Consumed, LogError, Position};

pub struct EmbeddedConsumer {
    shared: Arc<Shared>,
    group_file: PathBuf,
    file: File,
    /// Next offset to read per partition.
    next: Vec<u64>,
    committed: BTreeMap<u32, u64>,
    appended: watch::Receiver<u64>,
    /// Partition to read first next time, so one busy partition cannot starve the others.
    start: usize,
}

fn group_path(dir: &Path, group: &str) -> Result<PathBuf, LogError> {
    let valid = !group.is_empty()
        && group.len() <= 200
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !group.starts_with('.');
    if !valid {
        return Err(LogError::Config(format!(
            "consumer group {group:?} must be 1-200 characters of a-z A-Z 0-9 . _ - not starting with a dot"
        )));
    }
    Ok(dir.join("groups").join(format!("{group}.json")))
}

pub(super) fn read_committed(dir: &Path, group: &str) -> Result<BTreeMap<u32, u64>, LogError> {
    let path = group_path(dir, group)?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| LogError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(LogError::io(format!("failed to read {}", path.display()))(
            e,
        )),
    }
}

impl EmbeddedConsumer {
    pub(super) fn new(shared: Arc<Shared>, group: &str) -> Result<Self, LogError> {
        let group_file = group_path(&shared.dir, group)?;
        let committed = read_committed(&shared.dir, group)?;
        let partitions = shared.index.len();
        let path = records_path(&shared.dir);
        let file = File::open(&path)
            .map_err(LogError::io(format!("failed to open {}", path.display())))?;
        let next = (0..partitions as u32)
            .map(|p| committed.get(&p).copied().unwrap_or(0))
            .collect();
        let appended = shared.appended.subscribe();
        Ok(Self {
            shared,
            group_file,
            file,
            next,
            committed,
            appended,
            start: 0,
        })
    }

    pub(crate) async fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Consumed>, LogError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.appended.borrow_and_update();
            let batch = self.read_available(max)?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            match tokio::time::timeout_at(deadline, self.appended.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
            }
        }
    }

    fn read_available(&mut self, max: usize) -> Result<Vec<Consumed>, LogError> {
        let partitions = self.next.len();
        let mut out = Vec::new();
        for step in 0..partitions {
            let partition = (self.start + step) % partitions;
            let want = max - out.len();
            if want == 0 {
                break;
            }
            let spans: Vec<Span> = {
                let index = self.shared.index[partition].read().expect("index poisoned");
                let first = self.next[partition] as usize;
                index
                    .get(first..index.len().min(first + want))
                    .unwrap_or_default()
                    .to_vec()
            };
            for span in spans {
                let mut frame = BytesMut::zeroed(span.len as usize);
                self.file
                    .read_exact_at(&mut frame, span.start)
                    .map_err(LogError::io(format!(
                        "failed to read partition {partition}"
                    )))?;
                let (timestamp_ms, record) = codec::decode(frame.freeze())?;
                let offset = self.next[partition];
                self.next[partition] += 1;
                out.push(Consumed {
                    position: Position {
                        partition: partition as u32,
                        offset,
                    },
                    timestamp_ms,
                    record,
                });
            }
        }
        self.start = (self.start + 1) % partitions.max(1);
        Ok(out)
    }

    /// Reads every partition from `next` (0 where not named, clamped to the end) from now on,
    /// and makes that the group's committed position.
    pub(crate) fn seek(&mut self, next: &BTreeMap<u32, u64>) -> Result<(), LogError> {
        for (partition, slot) in self.next.iter_mut().enumerate() {
            let end = self.shared.index[partition]
                .read()
                .expect("index poisoned")
                .len() as u64;
            *slot = next.get(&(partition as u32)).copied().unwrap_or(0).min(end);
        }
        self.committed = self
            .next
            .iter()
            .enumerate()
            .map(|(p, &n)| (p as u32, n))
            .collect();
        let json = serde_json::to_vec(&self.committed).expect("positions serialise");
        write_atomically(&self.group_file, &json)
    }

    /// Records not yet read per partition.
    pub(crate) fn lag(&self) -> BTreeMap<u32, u64> {
        self.next
            .iter()
            .enumerate()
            .map(|(p, &n)| {
                let end = self.shared.index[p].read().expect("index poisoned").len() as u64;
                (p as u32, end.saturating_sub(n))
            })
            .collect()
    }

    pub(crate) fn commit(&mut self, done: &[Position]) -> Result<(), LogError> {
        let mut changed = false;
        for position in done {
            let next = position.offset + 1;
            let entry = self.committed.entry(position.partition).or_insert(0);
            if next > *entry {
                *entry = next;
                changed = true;
            }
        }
        if changed {
            let json = serde_json::to_vec(&self.committed).expect("positions serialise");
            write_atomically(&self.group_file, &json)?;
        }
        Ok(())
    }
}
