//! Where each record is: per partition, the sealed segments' offset ranges (their indexes
//! loaded on demand, a few at a time) and the active segment's spans in memory.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::Span;
use super::disk::{Disk, ReadFile};
use super::segment::{self, Sealed, SegmentIndex};
use crate::LogError;

/// Sealed segment indexes kept loaded.
const CACHED_INDEXES: usize = 8;
/// Segment files kept open for reading.
const OPEN_SEGMENTS: usize = 32;

/// The active segment: spans of every record, per partition from `first`.
#[derive(Debug, Clone)]
pub(super) struct Active {
    pub(super) base: u64,
    pub(super) first: Vec<u64>,
    pub(super) spans: Vec<Vec<Span>>,
    pub(super) max_timestamp_ms: i64,
}

impl Active {
    pub(super) fn end(&self, partition: usize) -> u64 {
        self.first[partition] + self.spans[partition].len() as u64
    }
}

struct State {
    sealed: Vec<Sealed>,
    active: Active,
}

/// What is at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Frame(Span),
    /// A record a repair could not keep.
    Lost,
}

/// Records of a partition from an offset on.
pub(super) enum Slots {
    /// Consecutive offsets from the one asked for (empty: nothing written there yet).
    From(Vec<Slot>),
    /// The offset asked for was deleted by retention; the partition now starts at `start`.
    Gone { start: u64 },
}

pub(super) struct Index {
    disk: Arc<dyn Disk>,
    segments_dir: PathBuf,
    partitions: u32,
    state: RwLock<State>,
    loaded: Mutex<VecDeque<Arc<SegmentIndex>>>,
    files: Mutex<BTreeMap<u64, Arc<dyn ReadFile>>>,
}

impl Index {
    pub(super) fn new(
        disk: Arc<dyn Disk>,
        segments_dir: &Path,
        partitions: u32,
        sealed: Vec<Sealed>,
        active: Active,
    ) -> Self {
        Self {
            disk,
            segments_dir: segments_dir.to_owned(),
            partitions,
            state: RwLock::new(State { sealed, active }),
            loaded: Mutex::new(VecDeque::new()),
            files: Mutex::new(BTreeMap::new()),
        }
    }

    pub(super) fn partitions(&self) -> u32 {
        self.partitions
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("index poisoned")
    }

    pub(super) fn end_offsets(&self) -> Vec<u64> {
        let state = self.state();
        (0..self.partitions as usize)
            .map(|p| state.active.end(p))
            .collect()
    }

    pub(super) fn start_offsets(&self) -> Vec<u64> {
        let state = self.state();
        (0..self.partitions as usize)
            .map(|p| match state.sealed.first() {
                Some(s) => s.ranges[p].0,
                None => state.active.first[p],
            })
            .collect()
    }

    pub(super) fn segment_count(&self) -> usize {
        self.state().sealed.len() + 1
    }

    pub(super) fn sealed(&self) -> Vec<Sealed> {
        self.state().sealed.clone()
    }

    /// Adds the spans of a durable group to the active segment.
    pub(super) fn publish(&self, spans: Vec<Vec<Span>>, max_timestamp_ms: i64) {
        let mut state = self.state.write().expect("index poisoned");
        for (partition, spans) in spans.into_iter().enumerate() {
            state.active.spans[partition].extend(spans);
        }
        state.active.max_timestamp_ms = state.active.max_timestamp_ms.max(max_timestamp_ms);
    }

    /// The active segment as it is now (to seal it).
    pub(super) fn active(&self) -> Active {
        self.state().active.clone()
    }

    /// Seals the active segment (its index is written) and makes `next` the active one.
    pub(super) fn roll(&self, sealed: Arc<SegmentIndex>, next: Active) {
        let mut state = self.state.write().expect("index poisoned");
        state.sealed.push(sealed.sealed.clone());
        state.active = next;
        self.remember(sealed);
    }

    /// Forgets the oldest sealed segment (its files are deleted by the caller).
    pub(super) fn drop_oldest(&self) -> Option<Sealed> {
        let mut state = self.state.write().expect("index poisoned");
        if state.sealed.is_empty() {
            return None;
        }
        let gone = state.sealed.remove(0);
        self.files
            .lock()
            .expect("files poisoned")
            .remove(&gone.base);
        self.loaded
            .lock()
            .expect("cache poisoned")
            .retain(|i| i.sealed.base != gone.base);
        Some(gone)
    }

    fn remember(&self, index: Arc<SegmentIndex>) {
        let mut loaded = self.loaded.lock().expect("cache poisoned");
        loaded.retain(|i| i.sealed.base != index.sealed.base);
        loaded.push_front(index);
        loaded.truncate(CACHED_INDEXES);
    }

    fn load(&self, sealed: &Sealed) -> Result<Arc<SegmentIndex>, LogError> {
        if let Some(hit) = self
            .loaded
            .lock()
            .expect("cache poisoned")
            .iter()
            .find(|i| i.sealed.base == sealed.base)
        {
            return Ok(Arc::clone(hit));
        }
        let path = self.segments_dir.join(segment::index_name(sealed.base));
        let bytes = self
            .disk
            .read(&path)
            .map_err(LogError::io(format!("failed to read {}", path.display())))?;
        let index = segment::decode_index(&bytes, sealed.base, self.partitions)
            .filter(|i| i.sealed == *sealed)
            .ok_or_else(|| {
                LogError::Corrupt(format!(
                    "{} is damaged; `terra-ingest log repair` rebuilds it",
                    path.display()
                ))
            })?;
        let index = Arc::new(index);
        self.remember(Arc::clone(&index));
        Ok(index)
    }

    /// Up to `max` slots of `partition` from offset `from`.
    pub(super) fn slots(&self, partition: usize, from: u64, max: usize) -> Result<Slots, LogError> {
        let sealed = {
            let state = self.state();
            let active = &state.active;
            if from >= active.first[partition] {
                let at = (from - active.first[partition]) as usize;
                let spans = active.spans[partition].get(at..).unwrap_or_default();
                return Ok(Slots::From(
                    spans.iter().take(max).map(|s| Slot::Frame(*s)).collect(),
                ));
            }
            let after = state
                .sealed
                .partition_point(|s| s.ranges[partition].0 <= from);
            if after == 0 {
                let start = state
                    .sealed
                    .first()
                    .map_or(active.first[partition], |s| s.ranges[partition].0);
                return Ok(Slots::Gone { start });
            }
            let sealed = state.sealed[after - 1].clone();
            if from >= sealed.end(partition) {
                // between two segments: offsets a repair skipped so that none is reused
                let next = state
                    .sealed
                    .get(after)
                    .map_or(active.first[partition], |s| s.ranges[partition].0);
                let lost = (next - from).min(max as u64) as usize;
                return Ok(Slots::From(vec![Slot::Lost; lost]));
            }
            sealed
        };
        let index = self.load(&sealed)?;
        let first = sealed.ranges[partition].0;
        let entries = &index.entries[partition][(from - first) as usize..];
        Ok(Slots::From(
            entries
                .iter()
                .take(max)
                .map(|&(rel, len)| match len {
                    0 => Slot::Lost,
                    len => Slot::Frame(Span {
                        start: sealed.base + u64::from(rel),
                        len,
                    }),
                })
                .collect(),
        ))
    }

    /// The bytes of the frame at `span`.
    pub(super) fn read(&self, span: Span) -> Result<Vec<u8>, LogError> {
        self.read_range(span.start, span.len as usize)
    }

    /// The `len` bytes at global position `start`, all in one segment (frames that follow
    /// each other in it, read at once: see the consumer's `runs`); an error where they are not.
    pub(super) fn read_range(&self, start: u64, len: usize) -> Result<Vec<u8>, LogError> {
        let span = Span {
            start,
            len: u32::try_from(len)
                .map_err(|_| LogError::Unavailable(format!("a read of {len} bytes")))?,
        };
        let (base, active_base) = {
            let state = self.state();
            let active_base = state.active.base;
            if span.start >= active_base {
                (active_base, active_base)
            } else {
                // the segment that holds the span; none when retention deleted it meanwhile
                let after = state.sealed.partition_point(|s| s.base <= span.start);
                match after.checked_sub(1).map(|i| &state.sealed[i]) {
                    Some(s) if span.start + u64::from(span.len) <= s.base + s.data_len => {
                        (s.base, active_base)
                    }
                    _ => {
                        return Err(LogError::Unavailable(format!(
                            "the segment holding log position {} was deleted by retention \
                             while it was being read",
                            span.start
                        )));
                    }
                }
            }
        };
        let file = {
            let mut files = self.files.lock().expect("files poisoned");
            match files.get(&base) {
                Some(file) => Arc::clone(file),
                None => {
                    let path = self.segments_dir.join(segment::log_name(base));
                    let file = self
                        .disk
                        .open_read(&path)
                        .map_err(LogError::io(format!("failed to open {}", path.display())))?;
                    // a replay across many sealed segments keeps a bounded number open
                    while files.len() >= OPEN_SEGMENTS {
                        let Some(oldest) = files.keys().copied().find(|b| *b != active_base) else {
                            break;
                        };
                        files.remove(&oldest);
                    }
                    files.insert(base, Arc::clone(&file));
                    file
                }
            }
        };
        let mut frame = vec![0; span.len as usize];
        file.read_exact_at(&mut frame, span.start - base)
            .map_err(LogError::io(format!(
                "failed to read segment {}",
                segment::log_name(base)
            )))?;
        Ok(frame)
    }
}
