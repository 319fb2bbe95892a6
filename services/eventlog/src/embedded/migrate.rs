//! The version-1 log (one `records.log`, offsets implied by order) rewritten as the first
//! segment, once, on open (or by `repair`, keeping every intact frame).

use std::path::{Path, PathBuf};

use super::codec::{self, FRAME_HEADER, FrameMeta};
use super::disk::Disk;
use super::open::io_err;
use super::segment::{self, Window};
use crate::LogError;

/// Rewrites the version-1 log (`records.log`, one file, offsets implied by order) as the
/// first segment, then removes it. A damaged frame with intact frames after it is refused
/// (`salvage` false) or skipped (`salvage` true, for `repair`: every intact frame is kept).
pub(super) fn migrate_v1(
    disk: &dyn Disk,
    dir: &Path,
    partitions: u32,
    salvage: bool,
) -> Result<(), LogError> {
    let old = dir.join("records.log");
    if !disk.exists(&old) {
        return Ok(());
    }
    let segments_dir = dir.join("segments");
    let new: PathBuf = segments_dir.join(segment::log_name(0));
    if !disk.exists(&new) {
        let file = disk
            .open_read(&old)
            .map_err(io_err(format!("failed to open {}", old.display())))?;
        let mut window =
            Window::new(file).map_err(io_err(format!("failed to read {}", old.display())))?;
        let tmp = segments_dir.join("migrating.tmp");
        if disk.exists(&tmp) {
            disk.remove(&tmp)
                .map_err(io_err(format!("failed to remove {}", tmp.display())))?;
        }
        let mut out = disk
            .open_append(&tmp)
            .map_err(io_err(format!("failed to create {}", tmp.display())))?;
        let mut buffer = codec::encode_segment_header(&vec![0; partitions as usize]);
        let mut next = vec![0u64; partitions as usize];
        let mut at = 0u64;
        let mut kept = 0u64;
        let mut skipped = 0u64;
        let mut written = 0u64;
        while at + FRAME_HEADER as u64 <= window.len {
            match v1_frame_at(&mut window, at, partitions)? {
                Some((partition, timestamp_ms, record, len)) => {
                    // each frame its own group, so damage before any of them is never
                    // taken for a torn tail
                    let meta = FrameMeta {
                        partition,
                        offset: next[partition as usize],
                        group_start: written + buffer.len() as u64,
                        timestamp_ms,
                    };
                    next[partition as usize] += 1;
                    codec::encode(&record, meta, &mut buffer);
                    kept += 1;
                    at += len;
                }
                None => {
                    let later = (at + 1..window.len).find_map(|y| {
                        v1_frame_at(&mut window, y, partitions)
                            .ok()
                            .flatten()
                            .map(|_| y)
                    });
                    match later {
                        None => break, // a torn tail
                        Some(y) if salvage => {
                            skipped += y - at;
                            at = y;
                        }
                        Some(y) => {
                            drop(out);
                            let _ = disk.remove(&tmp);
                            return Err(LogError::Corrupt(format!(
                                "{} (version 1) is damaged at byte {at}; intact records follow \
                                 at byte {y}, so this is not a write torn by a crash. Nothing \
                                 was changed. `terra-ingest log repair --log embedded:{}` keeps \
                                 every intact record",
                                old.display(),
                                dir.display()
                            )));
                        }
                    }
                }
            }
            if buffer.len() >= 4 << 20 {
                out.write_all(&buffer)
                    .map_err(io_err(format!("failed to write {}", tmp.display())))?;
                written += buffer.len() as u64;
                buffer.clear();
            }
        }
        out.write_all(&buffer)
            .and_then(|()| out.sync_data())
            .map_err(io_err(format!("failed to write {}", tmp.display())))?;
        written += buffer.len() as u64;
        drop(out);
        disk.rename(&tmp, &new)
            .and_then(|()| disk.sync_dir(&segments_dir))
            .map_err(io_err(format!("failed to create {}", new.display())))?;
        tracing::info!(
            records = kept,
            bytes = written,
            skipped_bytes = skipped,
            "migrated the embedded log from one records.log to segments"
        );
    }
    disk.remove(&old)
        .and_then(|()| disk.sync_dir(dir))
        .map_err(io_err(format!("failed to remove {}", old.display())))
}

/// An intact version-1 frame at `at`: partition, timestamp, record, frame length.
fn v1_frame_at(
    window: &mut Window,
    at: u64,
    partitions: u32,
) -> Result<Option<(u32, i64, crate::Record, u64)>, LogError> {
    let io = io_err("failed to read records.log".into());
    if at + FRAME_HEADER as u64 > window.len {
        return Ok(None);
    }
    let header = window.get(at, FRAME_HEADER).map_err(io)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4"));
    if !(16..=codec::MAX_FRAME).contains(&len) || at + (FRAME_HEADER + len) as u64 > window.len {
        return Ok(None);
    }
    let payload = window
        .get(at + FRAME_HEADER as u64, len)
        .map_err(io_err("failed to read records.log".into()))?;
    if crc32fast::hash(payload) != crc {
        return Ok(None);
    }
    let payload = bytes::Bytes::copy_from_slice(payload);
    match codec::v1::decode_payload(payload) {
        Ok((partition, timestamp_ms, record)) if partition < partitions => Ok(Some((
            partition,
            timestamp_ms,
            record,
            (FRAME_HEADER + len) as u64,
        ))),
        _ => Ok(None),
    }
}
