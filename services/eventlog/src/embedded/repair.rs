//! `terra-ingest log repair`: keeps every intact record of a damaged log.
//!
//! Each segment is read frame by frame, skipping what does not check; a damaged segment is
//! written again with its intact frames only (the damaged file is kept beside it as
//! `<base>.log.damaged`). Every record keeps its offset: a record that could not be kept
//! leaves a gap that readers skip with an error naming it. Every segment is then sealed and
//! a new active one begins past both the last record and every group's committed position,
//! so no offset a consumer has seen is ever given to another record.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::codec::{self, FrameMeta};
use super::disk::{Disk, OsDisk};
use super::{consumer, open, segment};
use crate::LogError;

/// What a repair did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    pub segments: usize,
    /// Intact records kept (all segments).
    pub records_kept: u64,
    /// Segments written again, with the byte ranges skipped in each.
    pub repaired: Vec<(PathBuf, Vec<(u64, u64)>)>,
    /// `(partition, from, to)`: offsets `from..to` no intact record holds.
    pub lost: Vec<(u32, u64, u64)>,
    /// Where each partition continues.
    pub next_offsets: Vec<u64>,
}

/// Repairs the embedded log in `dir` (which no process may have open).
pub fn repair(dir: &Path) -> Result<RepairReport, LogError> {
    repair_on(Arc::new(OsDisk), dir)
}

pub fn repair_on(disk: Arc<dyn Disk>, dir: &Path) -> Result<RepairReport, LogError> {
    let disk = disk.as_ref();
    if !disk.exists(&dir.join("meta.json")) {
        return Err(LogError::Config(format!(
            "{} holds no embedded log (no meta.json)",
            dir.display()
        )));
    }
    let (_lock, partitions) = open::prepare(disk, dir, 1)?;
    let p = partitions as usize;
    super::migrate::migrate_v1(disk, dir, partitions, true)?;
    let segments_dir = dir.join("segments");
    let header_len = codec::segment_header_len(partitions);
    let mut report = RepairReport::default();
    let mut end = vec![0u64; p];
    let mut next_base = 0;
    for base in open::list_segments(disk, &segments_dir)? {
        let path = segments_dir.join(segment::log_name(base));
        report.segments += 1;
        let file = disk
            .open_read(&path)
            .map_err(LogError::io(format!("failed to open {}", path.display())))?;
        let mut window = segment::Window::new(file)
            .map_err(LogError::io(format!("failed to read {}", path.display())))?;
        let header = window
            .get(0, header_len.min(window.len) as usize)
            .ok()
            .and_then(|h| codec::decode_segment_header(h, partitions));
        let header_ok = header.is_some();
        let first = header.unwrap_or_else(|| end.clone());
        let (frames, mut skipped) = segment::salvage(&mut window, header_len, &first)?;
        if !header_ok {
            skipped.insert(0, (0, header_len.min(window.len)));
        }
        for partition in 0..p {
            if first[partition] > end[partition] {
                report
                    .lost
                    .push((partition as u32, end[partition], first[partition]));
            }
        }
        let (frames, data_len) = if skipped.is_empty() {
            (frames, window.len)
        } else {
            let frames = rewrite(disk, &path, &mut window, &frames, &first)?;
            report.repaired.push((path.clone(), skipped));
            let len = frames
                .last()
                .map_or(header_len, |(_, at, len)| at + u64::from(*len));
            (frames, len)
        };
        // the index, with a zero-length entry for every offset no intact record holds
        let mut entries: Vec<Vec<(u32, u32)>> = vec![Vec::new(); p];
        let mut max_timestamp_ms = 0;
        for (meta, at, len) in &frames {
            let partition = meta.partition as usize;
            let expected = first[partition] + entries[partition].len() as u64;
            if meta.offset > expected {
                report.lost.push((meta.partition, expected, meta.offset));
                entries[partition].resize((meta.offset - first[partition]) as usize, (0, 0));
            }
            entries[partition].push((*at as u32, *len));
            max_timestamp_ms = max_timestamp_ms.max(meta.timestamp_ms);
        }
        report.records_kept += frames.len() as u64;
        let index = segment::SegmentIndex {
            sealed: segment::Sealed {
                base,
                data_len,
                max_timestamp_ms,
                ranges: (0..p)
                    .map(|q| (first[q], entries[q].len() as u64))
                    .collect(),
            },
            entries,
        };
        for (partition, slot) in end.iter_mut().enumerate() {
            *slot = index.sealed.end(partition);
        }
        open::write_index(disk, &segments_dir, &index)?;
        next_base = base + window.len.max(data_len);
    }
    // a fresh active segment past every record and every committed position
    let groups = consumer::all_committed(disk, dir)?;
    let mut next = end.clone();
    for committed in groups.values() {
        for (partition, slot) in next.iter_mut().enumerate() {
            *slot = (*slot).max(committed.get(&(partition as u32)).copied().unwrap_or(0));
        }
    }
    for partition in 0..p {
        if next[partition] > end[partition] {
            report
                .lost
                .push((partition as u32, end[partition], next[partition]));
        }
    }
    open::create_segment(disk, &segments_dir, next_base, &next)?;
    report.next_offsets = next;
    Ok(report)
}

/// Writes `frames` of the segment at `path` into a new file that replaces it; the damaged
/// file stays beside it as `<name>.damaged`. Returns the frames at their new places.
fn rewrite(
    disk: &dyn Disk,
    path: &Path,
    window: &mut segment::Window,
    frames: &[(FrameMeta, u64, u32)],
    first: &[u64],
) -> Result<Vec<(FrameMeta, u64, u32)>, LogError> {
    let io = |what: &Path| LogError::io(format!("failed to repair {}", what.display()));
    let tmp = path.with_extension("repairing");
    if disk.exists(&tmp) {
        disk.remove(&tmp).map_err(io(&tmp))?;
    }
    let mut out = disk.open_append(&tmp).map_err(io(&tmp))?;
    let mut buffer = codec::encode_segment_header(first);
    let header_len = buffer.len() as u64;
    let mut placed = Vec::with_capacity(frames.len());
    let mut written = 0u64;
    for (meta, at, len) in frames {
        let frame = window.get(*at, *len as usize).map_err(io(path))?;
        let (_, record) = codec::decode(Bytes::copy_from_slice(frame))?;
        let start = buffer.len();
        // one group for the whole rewritten segment: it is sealed, never torn
        let meta = FrameMeta {
            group_start: header_len,
            ..*meta
        };
        codec::encode(&record, meta, &mut buffer);
        placed.push((meta, written + start as u64, (buffer.len() - start) as u32));
        if buffer.len() >= 4 << 20 {
            out.write_all(&buffer).map_err(io(&tmp))?;
            written += buffer.len() as u64;
            buffer.clear();
        }
    }
    out.write_all(&buffer)
        .and_then(|()| out.sync_data())
        .map_err(io(&tmp))?;
    drop(out);
    // a copy of the damaged file first, then the repaired one renamed over it: a crash at
    // any point leaves a whole segment under its name
    let damaged = path.with_extension("log.damaged");
    if disk.exists(&damaged) {
        disk.remove(&damaged).map_err(io(&damaged))?;
    }
    let mut copy = disk.open_append(&damaged).map_err(io(&damaged))?;
    let mut at = 0;
    while at < window.len {
        let n = (window.len - at).min(4 << 20);
        let chunk = window.get(at, n as usize).map_err(io(path))?;
        copy.write_all(chunk).map_err(io(&damaged))?;
        at += n;
    }
    copy.sync_data().map_err(io(&damaged))?;
    drop(copy);
    let folder = path.parent().unwrap_or(Path::new("."));
    disk.rename(&tmp, path)
        .and_then(|()| disk.sync_dir(folder))
        .map_err(io(path))?;
    Ok(placed)
}
