//! Opening a log folder: folders, lock, meta, the migration of a version-1 `records.log`,
//! the sealed segments' index headers and the scan of the active segment.

use std::path::Path;
use std::sync::Arc;

use super::codec::{self, FrameMeta};
use super::disk::{AppendFile, Disk};
use super::index::{Active, Index};
use super::segment::{self, Outcome, Sealed, SegmentIndex, Window};
use super::{EmbeddedOptions, Span, write_atomically};
use crate::{LogError, private_fs};

pub(super) struct Opened {
    pub(super) index: Index,
    pub(super) lock: Box<dyn Send + Sync>,
    pub(super) active_file: Box<dyn AppendFile>,
    pub(super) active_len: u64,
}

pub(super) fn io_err(context: String) -> impl FnOnce(std::io::Error) -> LogError {
    LogError::io(context)
}

/// Creates the folders, takes the lock and reads meta.json: what `open` and `repair` share.
pub(super) fn prepare(
    disk: &dyn Disk,
    dir: &Path,
    partitions: u32,
) -> Result<(Box<dyn Send + Sync>, u32), LogError> {
    let existed = disk.exists(dir);
    for folder in [dir.to_owned(), dir.join("segments"), dir.join("groups")] {
        disk.create_dir_all(&folder)
            .map_err(io_err(format!("failed to create {}", folder.display())))?;
        // a log made by an earlier version: its folders (which close everything in them)
        private_fs::tighten_and_warn(&folder);
    }
    // the new names must survive a crash: the folders' entries in their parents
    if !existed && let Some(parent) = dir.parent() {
        disk.sync_dir(parent)
            .map_err(io_err(format!("failed to sync {}", parent.display())))?;
    }
    disk.sync_dir(dir)
        .map_err(io_err(format!("failed to sync {}", dir.display())))?;
    let lock = disk.lock(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => LogError::Unavailable(e.to_string()),
        _ => LogError::io("failed to open the log's LOCK file")(e),
    })?;
    for name in ["meta.json", "records.log"] {
        private_fs::tighten_and_warn(&dir.join(name));
    }
    let partitions = read_or_create_meta(disk, dir, partitions)?;
    Ok((lock, partitions))
}

pub(super) fn open(
    disk: &Arc<dyn Disk>,
    dir: &Path,
    partitions: u32,
    _options: &EmbeddedOptions,
) -> Result<Opened, LogError> {
    let (lock, partitions) = prepare(disk.as_ref(), dir, partitions)?;
    let segments_dir = dir.join("segments");
    super::migrate::migrate_v1(disk.as_ref(), dir, partitions, false)?;
    let bases = list_segments(disk.as_ref(), &segments_dir)?;
    let mut sealed: Vec<Sealed> = Vec::new();
    let mut active = None;
    for (i, &base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        let path = segments_dir.join(segment::log_name(base));
        if let Some(header) = read_index_header(disk.as_ref(), &segments_dir, base, partitions)? {
            let size = disk.open_read(&path).and_then(|f| f.size());
            if size.as_ref().is_ok_and(|size| *size == header.data_len) {
                sealed.push(header);
                continue;
            }
            // an index that does not describe its segment (a roll that failed half-way):
            // the segment is scanned instead
            tracing::warn!(path = %path.display(), indexed = header.data_len, size = ?size.ok(), "a segment's index does not match it: scanning the segment");
        }
        let (first, window) = open_segment(disk.as_ref(), &path, partitions)?;
        let mut window = window;
        let scan = segment::scan(&mut window, codec::segment_header_len(partitions), &first)?;
        match scan.outcome {
            Outcome::Clean => {}
            Outcome::TornTail if last => {
                tracing::warn!(
                    path = %path.display(),
                    kept = scan.intact_end,
                    dropped = window.len - scan.intact_end,
                    "cutting a torn tail (a write the crash interrupted, never acknowledged) off the embedded log"
                );
                let mut file = disk
                    .open_append(&path)
                    .map_err(io_err(format!("failed to open {}", path.display())))?;
                file.truncate(scan.intact_end)
                    .and_then(|()| file.sync_data())
                    .map_err(io_err(format!("failed to cut {}", path.display())))?;
                window.len = scan.intact_end;
            }
            Outcome::TornTail | Outcome::Damaged { .. } => {
                return Err(damaged(
                    dir,
                    &path,
                    &scan.outcome,
                    scan.intact_end,
                    &scan.frames,
                ));
            }
        }
        let spans = spans_of(partitions, &scan.frames, base);
        let max_timestamp_ms = scan
            .frames
            .iter()
            .map(|f| f.0.timestamp_ms)
            .max()
            .unwrap_or(0);
        if last {
            active = Some((
                Active {
                    base,
                    first,
                    spans,
                    max_timestamp_ms,
                },
                window.len,
            ));
        } else {
            // a sealed segment whose index is missing or damaged: written again from the scan
            let index = index_of(base, window.len, max_timestamp_ms, &first, &spans);
            write_index(disk.as_ref(), &segments_dir, &index)?;
            sealed.push(index.sealed);
        }
    }
    check_order(&sealed, dir)?;
    let (active, active_len) = match active {
        Some(active) => active,
        None => {
            let (base, mut first): (u64, Vec<u64>) = match sealed.last() {
                Some(s) => (
                    s.base + s.data_len,
                    (0..partitions as usize).map(|p| s.end(p)).collect(),
                ),
                None => (0, vec![0; partitions as usize]),
            };
            // past every group's committed position too (a repair cut short): an offset a
            // group has read is never given to another record
            for committed in super::consumer::all_committed(disk.as_ref(), dir)?.values() {
                for (partition, slot) in first.iter_mut().enumerate() {
                    *slot = (*slot).max(committed.get(&(partition as u32)).copied().unwrap_or(0));
                }
            }
            create_segment(disk.as_ref(), &segments_dir, base, &first)?;
            let len = codec::segment_header_len(partitions);
            (
                Active {
                    base,
                    first,
                    spans: vec![Vec::new(); partitions as usize],
                    max_timestamp_ms: 0,
                },
                len,
            )
        }
    };
    if let Some(last) = sealed.last()
        && (0..partitions as usize).any(|p| active.first[p] < last.end(p))
    {
        return Err(LogError::Corrupt(format!(
            "{}: the active segment's offsets start before the last sealed segment's end",
            dir.display()
        )));
    }
    let path = segments_dir.join(segment::log_name(active.base));
    let active_file = disk
        .open_append(&path)
        .map_err(io_err(format!("failed to open {}", path.display())))?;
    let index = Index::new(Arc::clone(disk), &segments_dir, partitions, sealed, active);
    Ok(Opened {
        index,
        lock,
        active_file,
        active_len,
    })
}

fn check_order(sealed: &[Sealed], dir: &Path) -> Result<(), LogError> {
    for pair in sealed.windows(2) {
        let partitions = pair[0].ranges.len();
        if pair[1].base < pair[0].base + pair[0].data_len
            || (0..partitions).any(|p| pair[1].ranges[p].0 < pair[0].end(p))
        {
            return Err(LogError::Corrupt(format!(
                "{}: segments {} and {} overlap",
                dir.display(),
                segment::log_name(pair[0].base),
                segment::log_name(pair[1].base)
            )));
        }
    }
    Ok(())
}

/// The error for a segment damaged where a crash cannot have torn it.
pub(super) fn damaged(
    dir: &Path,
    path: &Path,
    outcome: &Outcome,
    at: u64,
    frames: &[(FrameMeta, u64, u32)],
) -> LogError {
    let before = match frames.last() {
        Some((meta, _, _)) => format!(
            "after the record of partition {} offset {}",
            meta.partition, meta.offset
        ),
        None => "before its first record".to_owned(),
    };
    let follows = match outcome {
        Outcome::Damaged {
            resumes_at,
            partition,
            offset,
        } if *partition != u32::MAX => format!(
            "intact records written after it follow (partition {partition} offset {offset} at \
             byte {resumes_at}), so this is not a write torn by a crash"
        ),
        _ => "the damaged record is complete, so this is not a write torn by a crash".to_owned(),
    };
    LogError::Corrupt(format!(
        "{} is damaged at byte {at} ({before}); {follows}. Nothing was changed. \
         `terra-ingest log repair --log embedded:{}` keeps every intact record and leaves \
         the damaged file beside it",
        path.display(),
        dir.display()
    ))
}

pub(super) fn list_segments(disk: &dyn Disk, segments_dir: &Path) -> Result<Vec<u64>, LogError> {
    let names = disk
        .list(segments_dir)
        .map_err(io_err(format!("failed to list {}", segments_dir.display())))?;
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| segment::parse_log_name(n))
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// A segment's first offsets and a window over it.
pub(super) fn open_segment(
    disk: &dyn Disk,
    path: &Path,
    partitions: u32,
) -> Result<(Vec<u64>, Window), LogError> {
    let file = disk
        .open_read(path)
        .map_err(io_err(format!("failed to open {}", path.display())))?;
    let mut window =
        Window::new(file).map_err(io_err(format!("failed to read {}", path.display())))?;
    let header_len = codec::segment_header_len(partitions);
    let first = (window.len >= header_len)
        .then(|| window.get(0, header_len as usize).ok())
        .flatten()
        .and_then(|h| codec::decode_segment_header(h, partitions))
        .ok_or_else(|| {
            LogError::Corrupt(format!(
                "{}: the segment header is missing or damaged",
                path.display()
            ))
        })?;
    Ok((first, window))
}

fn read_index_header(
    disk: &dyn Disk,
    segments_dir: &Path,
    base: u64,
    partitions: u32,
) -> Result<Option<Sealed>, LogError> {
    let path = segments_dir.join(segment::index_name(base));
    if !disk.exists(&path) {
        return Ok(None);
    }
    let file = disk
        .open_read(&path)
        .map_err(io_err(format!("failed to open {}", path.display())))?;
    let len = file
        .size()
        .map_err(io_err(format!("failed to read {}", path.display())))?;
    let want = (8 + 4 + 4 + 8 + 8 + 16 * u64::from(partitions) + 4).min(len);
    let mut bytes = vec![0; want as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(io_err(format!("failed to read {}", path.display())))?;
    let header = segment::decode_index_header(&bytes, base, partitions);
    if header.is_none() {
        tracing::warn!(path = %path.display(), "a segment index is damaged: rebuilding it from its segment");
    }
    Ok(header)
}

/// Spans per partition of scanned frames.
pub(super) fn spans_of(
    partitions: u32,
    frames: &[(FrameMeta, u64, u32)],
    base: u64,
) -> Vec<Vec<Span>> {
    let mut spans = vec![Vec::new(); partitions as usize];
    for (meta, at, len) in frames {
        spans[meta.partition as usize].push(Span {
            start: base + at,
            len: *len,
        });
    }
    spans
}

/// The index of a segment whose frames are `spans` (global positions).
pub(super) fn index_of(
    base: u64,
    data_len: u64,
    max_timestamp_ms: i64,
    first: &[u64],
    spans: &[Vec<Span>],
) -> SegmentIndex {
    SegmentIndex {
        sealed: Sealed {
            base,
            data_len,
            max_timestamp_ms,
            ranges: first
                .iter()
                .zip(spans)
                .map(|(f, s)| (*f, s.len() as u64))
                .collect(),
        },
        entries: spans
            .iter()
            .map(|s| s.iter().map(|s| ((s.start - base) as u32, s.len)).collect())
            .collect(),
    }
}

pub(super) fn write_index(
    disk: &dyn Disk,
    segments_dir: &Path,
    index: &SegmentIndex,
) -> Result<(), LogError> {
    write_atomically(
        disk,
        &segments_dir.join(segment::index_name(index.sealed.base)),
        &segment::encode_index(index),
    )
}

/// Creates segment `base` holding just its header, durably (written beside, synced, renamed
/// in, folder synced): a segment file always has a whole header.
pub(super) fn create_segment(
    disk: &dyn Disk,
    segments_dir: &Path,
    base: u64,
    first: &[u64],
) -> Result<(), LogError> {
    let path = segments_dir.join(segment::log_name(base));
    write_atomically(disk, &path, &codec::encode_segment_header(first))
}

fn read_or_create_meta(disk: &dyn Disk, dir: &Path, partitions: u32) -> Result<u32, LogError> {
    let path = dir.join("meta.json");
    match disk.read(&path) {
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
                disk,
                &path,
                serde_json::json!({ "partitions": partitions })
                    .to_string()
                    .as_bytes(),
            )?;
            Ok(partitions)
        }
        Err(e) => Err(io_err(format!("failed to read {}", path.display()))(e)),
    }
}
