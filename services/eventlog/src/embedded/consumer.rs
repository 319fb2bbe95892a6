//! Consumer groups over the embedded log: read positions per partition, commits in
//! `groups/<group>.json`. A group's file is made when its first consumer is, so retention
//! knows the group before it commits anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::disk::Disk;
use super::index::{Slot, Slots};
use super::{Shared, Span, codec, write_atomically};
use crate::{Consumed, LogError, Position};

pub struct EmbeddedConsumer {
    shared: Arc<Shared>,
    group: String,
    group_file: PathBuf,
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

pub(super) fn read_committed(
    disk: &dyn Disk,
    dir: &Path,
    group: &str,
) -> Result<BTreeMap<u32, u64>, LogError> {
    let path = group_path(dir, group)?;
    match disk.read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| LogError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(LogError::io(format!("failed to read {}", path.display()))(
            e,
        )),
    }
}

/// Every group's committed positions.
pub(super) fn all_committed(
    disk: &dyn Disk,
    dir: &Path,
) -> Result<BTreeMap<String, BTreeMap<u32, u64>>, LogError> {
    let folder = dir.join("groups");
    let names = disk
        .list(&folder)
        .map_err(LogError::io(format!("failed to list {}", folder.display())))?;
    names
        .iter()
        .filter_map(|n| n.strip_suffix(".json"))
        .map(|group| Ok((group.to_owned(), read_committed(disk, dir, group)?)))
        .collect()
}

impl EmbeddedConsumer {
    pub(super) fn new(shared: Arc<Shared>, group: &str) -> Result<Self, LogError> {
        let group_file = group_path(&shared.dir, group)?;
        let disk = shared.disk.as_ref();
        let stored = read_committed(disk, &shared.dir, group)?;
        let start = shared.index.start_offsets();
        let next: Vec<u64> = (0..start.len())
            .map(|p| stored.get(&(p as u32)).copied().unwrap_or(start[p]))
            .collect();
        // every partition named, so retention knows where this group is before it commits
        // (a partition it never commits in does not hold segments back for ever)
        let committed: BTreeMap<u32, u64> = next
            .iter()
            .enumerate()
            .map(|(p, &n)| (p as u32, n))
            .collect();
        if committed != stored || !disk.exists(&group_file) {
            let json = serde_json::to_vec(&committed).expect("positions serialise");
            write_atomically(disk, &group_file, &json)?;
        }
        let appended = shared.appended.subscribe();
        Ok(Self {
            shared,
            group: group.to_owned(),
            group_file,
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
        // each partition's next slots, then up to `max` of them in the order they were
        // written (so the frames read follow each other in the segments: see `runs`)
        let mut next = Vec::new();
        let mut gone = None;
        for step in 0..partitions {
            let partition = (self.start + step) % partitions;
            let from = self.next[partition];
            match self.shared.index.slots(partition, from, max)? {
                Slots::From(found) => next.push((partition, from, found.into_iter().peekable())),
                Slots::Gone { start } => {
                    let end = self.shared.index.end_offsets()[partition];
                    gone = Some(LogError::gone(partition as u32, "wanted", from, start, end));
                    break;
                }
            }
        }
        let mut slots: Vec<(usize, u64, Slot)> = Vec::new();
        while slots.len() < max {
            // a record repair could not keep goes first: it has no place to wait for
            let first = next
                .iter_mut()
                .enumerate()
                .filter_map(|(i, (_, _, found))| match found.peek()? {
                    Slot::Frame(span) => Some((i, span.start)),
                    Slot::Lost => Some((i, 0)),
                })
                .min_by_key(|&(_, start)| start);
            let Some((i, _)) = first else { break };
            let (partition, offset, found) = &mut next[i];
            let slot = found.next().expect("peeked");
            slots.push((*partition, *offset, slot));
            *offset += 1;
        }
        let spans: Vec<Option<Span>> = slots
            .iter()
            .map(|(_, _, slot)| match slot {
                Slot::Frame(span) => Some(*span),
                Slot::Lost => None,
            })
            .collect();
        let mut frames = self.read_runs(&spans);
        let mut out = Vec::new();
        for (i, (partition, offset, slot)) in slots.into_iter().enumerate() {
            let span = match slot {
                Slot::Frame(span) => span,
                Slot::Lost => {
                    self.next[partition] += 1;
                    tracing::error!(
                        group = self.group,
                        partition,
                        offset,
                        "skipping a record `log repair` could not keep (it was damaged on disk)"
                    );
                    continue;
                }
            };
            let (meta, record) = match self.read_frame(partition, offset, span, frames[i].take()) {
                Ok(read) => read,
                // what was read before the error is returned; the error comes with the
                // next poll, at this record (nothing is skipped)
                Err(_) if !out.is_empty() => return Ok(out),
                Err(e) => return Err(e),
            };
            self.next[partition] += 1;
            out.push(Consumed {
                position: Position {
                    partition: partition as u32,
                    offset,
                },
                timestamp_ms: meta.timestamp_ms,
                record,
            });
        }
        // the records before it first; the error with the next poll
        if let Some(err) = gone.filter(|_| out.is_empty()) {
            return Err(err);
        }
        self.start = (self.start + 1) % partitions.max(1);
        Ok(out)
    }

    /// The frames at `spans` (`None`: nothing to read), frames near each other in a segment
    /// read by one `pread` (see [`runs`]) and each a slice of it. `None` where a run's read
    /// failed: that frame is then read alone, so that the error names its record.
    fn read_runs(&self, spans: &[Option<Span>]) -> Vec<Option<Bytes>> {
        let mut frames = vec![None; spans.len()];
        for run in runs(spans) {
            let (start, end) = (run[0].1, run[run.len() - 1].1);
            let len = (end.start + u64::from(end.len) - start.start) as usize;
            let Ok(read) = self.shared.index.read_range(start.start, len) else {
                continue;
            };
            let read = Bytes::from(read);
            for (i, span) in run {
                let at = (span.start - start.start) as usize;
                frames[i] = Some(read.slice(at..at + span.len as usize));
            }
        }
        frames
    }

    /// The record at `span`, from `frame` when it was read already.
    fn read_frame(
        &self,
        partition: usize,
        offset: u64,
        span: Span,
        frame: Option<Bytes>,
    ) -> Result<(codec::FrameMeta, crate::Record), LogError> {
        let frame = match frame {
            Some(frame) => frame,
            None => Bytes::from(self.shared.index.read(span)?),
        };
        let (meta, record) = codec::decode(frame).map_err(|e| {
            LogError::Corrupt(format!(
                "partition {partition} offset {offset}: {e}; `terra-ingest log repair` keeps \
                 every intact record"
            ))
        })?;
        if meta.partition as usize != partition || meta.offset != offset {
            return Err(LogError::Corrupt(format!(
                "partition {partition} offset {offset}: the stored frame is partition {} offset {}",
                meta.partition, meta.offset
            )));
        }
        Ok((meta, record))
    }

    /// Reads every partition from `next` (the partition's start where not named) from now
    /// on, and makes that the group's committed position. An offset that retention already
    /// deleted, or one past the end (another log's position), is refused: [`LogError::Gone`].
    pub(crate) fn seek(&mut self, next: &BTreeMap<u32, u64>) -> Result<(), LogError> {
        let ends = self.shared.index.end_offsets();
        let starts = self.shared.index.start_offsets();
        for (partition, slot) in self.next.iter_mut().enumerate() {
            let wanted = next.get(&(partition as u32)).copied();
            if let Some(wanted) = wanted
                && (wanted < starts[partition] || wanted > ends[partition])
            {
                return Err(LogError::gone(
                    partition as u32,
                    "wanted",
                    wanted,
                    starts[partition],
                    ends[partition],
                ));
            }
            *slot = wanted.unwrap_or(starts[partition]);
        }
        self.committed = self
            .next
            .iter()
            .enumerate()
            .map(|(p, &n)| (p as u32, n))
            .collect();
        let json = serde_json::to_vec(&self.committed).expect("positions serialise");
        write_atomically(self.shared.disk.as_ref(), &self.group_file, &json)
    }

    /// Records not yet read per partition.
    pub(crate) fn lag(&self) -> BTreeMap<u32, u64> {
        let ends = self.shared.index.end_offsets();
        self.next
            .iter()
            .enumerate()
            .map(|(p, &n)| (p as u32, ends[p].saturating_sub(n)))
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
            write_atomically(self.shared.disk.as_ref(), &self.group_file, &json)?;
        }
        Ok(())
    }
}

/// The most bytes one read takes for several frames.
pub(super) const RUN_BYTES: u64 = 256 << 10;
/// The most bytes between two frames read together (read for nothing: a record of this
/// partition read already, or beyond the poll's `max`).
pub(super) const RUN_GAP: u64 = 4 << 10;

/// The frames of `spans` grouped into runs, each read at once: by position, each frame after
/// the one before it within [`RUN_GAP`], a run at most [`RUN_BYTES`] (a larger frame alone).
/// Reading 4,000 frames of 3 KB one `pread` each cost the webhook fan-out 5 % of its CPU.
/// Each frame with its index into `spans`; a run's first and last are its lowest and
/// highest positions.
pub(super) fn runs(spans: &[Option<Span>]) -> Vec<Vec<(usize, Span)>> {
    let mut order: Vec<(usize, Span)> = spans
        .iter()
        .enumerate()
        .filter_map(|(i, span)| Some((i, (*span)?)))
        .collect();
    order.sort_by_key(|(_, span)| span.start);
    let mut runs: Vec<Vec<(usize, Span)>> = Vec::new();
    let mut run_start = 0;
    let mut run_end = 0;
    for (i, span) in order {
        let end = span.start + u64::from(span.len);
        let joins = !runs.is_empty()
            && span.start >= run_end
            && span.start - run_end <= RUN_GAP
            && end - run_start <= RUN_BYTES;
        match runs.last_mut() {
            Some(run) if joins => run.push((i, span)),
            _ => {
                runs.push(vec![(i, span)]);
                run_start = span.start;
            }
        }
        run_end = end;
    }
    runs
}
