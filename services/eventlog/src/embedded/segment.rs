//! Segments: their names, the index file written when one is sealed, and the scan that
//! rebuilds the active segment's index on open and tells a torn tail from damage.
//!
//! ```text
//! segments/<base>.log   header frame*; <base> (20 digits) is the segment's first global
//!                       position: a frame at byte b of the file is at global position base+b
//! segments/<base>.idx   written (synced, renamed into place) when the segment is sealed:
//!   "TERRAIDX" version:u32le(1) partitions:u32le data_len:u64le max_timestamp_ms:i64le
//!   { first_offset:u64le count:u64le } per partition, crc32(all before):u32le
//!   { rel_start:u32le len:u32le } per record, partition by partition (len 0: a record a
//!   repair could not keep), crc32(entries):u32le
//! ```
//! Opening reads the header of each index (a few bytes a segment) and scans only the active
//! segment, so open time follows the segment size, not the log's length.

use std::sync::Arc;

use bytes::{Buf, BufMut};

use super::codec::{self, FRAME_HEADER, FrameMeta};
use super::disk::ReadFile;
use crate::LogError;

const INDEX_MAGIC: &[u8; 8] = b"TERRAIDX";
const INDEX_VERSION: u32 = 1;

pub(super) fn log_name(base: u64) -> String {
    format!("{base:020}.log")
}

pub(super) fn index_name(base: u64) -> String {
    format!("{base:020}.idx")
}

/// The base of a segment file name (`<20 digits>.log`).
pub(super) fn parse_log_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A sealed segment as open time knows it: its index file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sealed {
    pub(super) base: u64,
    pub(super) data_len: u64,
    pub(super) max_timestamp_ms: i64,
    /// Per partition: first offset and number of offsets (gaps included).
    pub(super) ranges: Vec<(u64, u64)>,
}

impl Sealed {
    pub(super) fn end(&self, partition: usize) -> u64 {
        let (first, count) = self.ranges[partition];
        first + count
    }
}

/// A sealed segment's index, loaded when a reader needs it.
pub(super) struct SegmentIndex {
    pub(super) sealed: Sealed,
    /// Per partition, `(rel_start, len)` of each offset from the range's first.
    pub(super) entries: Vec<Vec<(u32, u32)>>,
}

fn index_header_len(partitions: usize) -> usize {
    8 + 4 + 4 + 8 + 8 + 16 * partitions + 4
}

pub(super) fn encode_index(index: &SegmentIndex) -> Vec<u8> {
    let partitions = index.entries.len();
    let mut out = Vec::new();
    out.put_slice(INDEX_MAGIC);
    out.put_u32_le(INDEX_VERSION);
    out.put_u32_le(partitions as u32);
    out.put_u64_le(index.sealed.data_len);
    out.put_i64_le(index.sealed.max_timestamp_ms);
    for (first, count) in &index.sealed.ranges {
        out.put_u64_le(*first);
        out.put_u64_le(*count);
    }
    let crc = crc32fast::hash(&out);
    out.put_u32_le(crc);
    let entries_at = out.len();
    for partition in &index.entries {
        for (rel, len) in partition {
            out.put_u32_le(*rel);
            out.put_u32_le(*len);
        }
    }
    let crc = crc32fast::hash(&out[entries_at..]);
    out.put_u32_le(crc);
    out
}

/// Reads an index file's header (`bytes` may hold just its start).
pub(super) fn decode_index_header(bytes: &[u8], base: u64, partitions: u32) -> Option<Sealed> {
    let len = index_header_len(partitions as usize);
    if bytes.len() < len || &bytes[..8] != INDEX_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[len - 4..len].try_into().ok()?);
    if crc32fast::hash(&bytes[..len - 4]) != crc {
        return None;
    }
    let mut buf = &bytes[8..len - 4];
    if buf.get_u32_le() != INDEX_VERSION || buf.get_u32_le() != partitions {
        return None;
    }
    let data_len = buf.get_u64_le();
    let max_timestamp_ms = buf.get_i64_le();
    let ranges = (0..partitions)
        .map(|_| (buf.get_u64_le(), buf.get_u64_le()))
        .collect();
    Some(Sealed {
        base,
        data_len,
        max_timestamp_ms,
        ranges,
    })
}

pub(super) fn decode_index(bytes: &[u8], base: u64, partitions: u32) -> Option<SegmentIndex> {
    let sealed = decode_index_header(bytes, base, partitions)?;
    let at = index_header_len(partitions as usize);
    let total: u64 = sealed.ranges.iter().map(|(_, c)| c).sum();
    let end = at.checked_add(usize::try_from(total).ok()?.checked_mul(8)?)?;
    if bytes.len() != end + 4 {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().ok()?);
    if crc32fast::hash(&bytes[at..end]) != crc {
        return None;
    }
    let mut buf = &bytes[at..end];
    let entries = sealed
        .ranges
        .iter()
        .map(|(_, count)| {
            (0..*count)
                .map(|_| (buf.get_u32_le(), buf.get_u32_le()))
                .collect()
        })
        .collect();
    Some(SegmentIndex { sealed, entries })
}

/// Reads a file through a window of buffered bytes (scans read frames in order).
pub(super) struct Window {
    file: Arc<dyn ReadFile>,
    pub(super) len: u64,
    start: u64,
    bytes: Vec<u8>,
}

impl Window {
    pub(super) fn new(file: Arc<dyn ReadFile>) -> std::io::Result<Self> {
        let len = file.size()?;
        Ok(Self {
            file,
            len,
            start: 0,
            bytes: Vec::new(),
        })
    }

    /// `n` bytes at `at`, which the caller knows lie within the file.
    pub(super) fn get(&mut self, at: u64, n: usize) -> std::io::Result<&[u8]> {
        let end = at + n as u64;
        if at < self.start || end > self.start + self.bytes.len() as u64 {
            let want = (n.max(4 << 20) as u64).min(self.len - at) as usize;
            self.bytes.resize(want, 0);
            self.file.read_exact_at(&mut self.bytes, at)?;
            self.start = at;
        }
        let from = (at - self.start) as usize;
        Ok(&self.bytes[from..from + n])
    }

    /// The frame at `at` when it is intact: its fixed fields and length in bytes.
    pub(super) fn frame_at(&mut self, at: u64) -> std::io::Result<Option<(FrameMeta, u32)>> {
        if at + FRAME_HEADER as u64 > self.len {
            return Ok(None);
        }
        let header: [u8; FRAME_HEADER] = self.get(at, FRAME_HEADER)?.try_into().expect("8");
        let Some(len) = codec::announced_len(&header) else {
            return Ok(None);
        };
        if at + (FRAME_HEADER + len) as u64 > self.len {
            return Ok(None);
        }
        let payload = self.get(at + FRAME_HEADER as u64, len)?;
        Ok(codec::check(&header, payload).map(|meta| (meta, (FRAME_HEADER + len) as u32)))
    }

    /// Whether the bytes `[at, end)` hold a zero-filled, 4 KiB-aligned page (or the zero
    /// tail of one): what a write torn by a crash leaves where the kernel had not written.
    pub(super) fn has_zero_page(&mut self, at: u64, end: u64) -> std::io::Result<bool> {
        let mut page = at & !4095;
        while page < end {
            let from = page.max(at);
            let to = (page + 4096).min(end);
            if self
                .get(from, (to - from) as usize)?
                .iter()
                .all(|b| *b == 0)
            {
                return Ok(true);
            }
            page += 4096;
        }
        Ok(false)
    }
}

/// Intact frames in file order: `(meta, byte in the segment, length)`.
pub(super) type Frames = Vec<(FrameMeta, u64, u32)>;

/// What a scan of a segment found.
pub(super) struct Scan {
    /// Intact frames in file order, up to the first damage: `(meta, rel_start, len)`.
    pub(super) frames: Vec<(FrameMeta, u64, u32)>,
    /// Where the intact prefix ends (the file's length when nothing is wrong).
    pub(super) intact_end: u64,
    pub(super) outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Clean,
    /// The tail from `intact_end` is a write torn by a crash: never acknowledged.
    TornTail,
    /// Bytes at `intact_end` are damaged and acknowledged data follows (the frame of
    /// `partition`/`offset` at byte `resumes_at`).
    Damaged {
        resumes_at: u64,
        partition: u32,
        offset: u64,
    },
}

/// Scans a segment whose header says each partition starts at `first`: every frame must be
/// intact, name the next offset of its partition, and belong to a group that starts at or
/// after the previous frame's.
pub(super) fn scan(window: &mut Window, header_len: u64, first: &[u64]) -> Result<Scan, LogError> {
    let io = |e| LogError::io("failed to read a log segment")(e);
    let mut next = first.to_vec();
    let mut frames = Vec::new();
    let mut at = header_len;
    let mut group = 0;
    while at < window.len {
        match window.frame_at(at).map_err(io)? {
            Some((meta, len))
                if next.get(meta.partition as usize) == Some(&meta.offset)
                    && (group..=at).contains(&meta.group_start) =>
            {
                next[meta.partition as usize] += 1;
                group = meta.group_start;
                frames.push((meta, at, len));
                at += u64::from(len);
            }
            _ => break,
        }
    }
    let intact_end = at;
    if at == window.len {
        return Ok(Scan {
            frames,
            intact_end,
            outcome: Outcome::Clean,
        });
    }
    // Something is wrong at `at`. Only the last group commit can have been torn by a crash
    // (a group is written only after the one before it was synced), and a tear leaves zero
    // pages or a short file, not wrong bytes. So: any intact frame of a later group after
    // `at`, or a whole frame with a bad checksum and no zero page followed by an intact frame
    // or by the end, is damage to acknowledged data.
    let partitions = first.len() as u32;
    let mut resync = at + 1;
    let mut followed_at = None;
    while resync + FRAME_HEADER as u64 <= window.len {
        if let Some((meta, len)) = window.frame_at(resync).map_err(io)?
            && meta.partition < partitions
        {
            if meta.group_start > at {
                return Ok(Scan {
                    frames,
                    intact_end,
                    outcome: Outcome::Damaged {
                        resumes_at: resync,
                        partition: meta.partition,
                        offset: meta.offset,
                    },
                });
            }
            followed_at.get_or_insert((resync, meta));
            resync += u64::from(len);
        } else {
            resync += 1;
        }
    }
    let header: Option<[u8; FRAME_HEADER]> = (at + FRAME_HEADER as u64 <= window.len)
        .then(|| {
            window
                .get(at, FRAME_HEADER)
                .map(|h| h.try_into().expect("8"))
        })
        .transpose()
        .map_err(io)?;
    if let Some(len) = header.as_ref().and_then(codec::announced_len) {
        let end = at + (FRAME_HEADER + len) as u64;
        let next_is_intact = end == window.len || followed_at.is_some_and(|(f, _)| f == end);
        if end <= window.len && next_is_intact && !window.has_zero_page(at, end).map_err(io)? {
            let (resumes_at, partition, offset) = match followed_at {
                Some((f, meta)) => (f, meta.partition, meta.offset),
                None => (end, u32::MAX, 0),
            };
            return Ok(Scan {
                frames,
                intact_end,
                outcome: Outcome::Damaged {
                    resumes_at,
                    partition,
                    offset,
                },
            });
        }
    }
    Ok(Scan {
        frames,
        intact_end,
        outcome: Outcome::TornTail,
    })
}

/// Every intact frame of a segment, whatever lies between them (for `repair`): frames in
/// file order whose partition is valid and whose offset is past the partition's last kept
/// one, and the byte ranges skipped.
pub(super) fn salvage(
    window: &mut Window,
    header_len: u64,
    first: &[u64],
) -> Result<(Frames, Vec<(u64, u64)>), LogError> {
    let io = |e| LogError::io("failed to read a log segment")(e);
    let mut next = first.to_vec();
    let mut frames = Vec::new();
    let mut skipped: Vec<(u64, u64)> = Vec::new();
    let mut at = header_len;
    while at < window.len {
        match window.frame_at(at).map_err(io)? {
            Some((meta, len))
                if next
                    .get(meta.partition as usize)
                    .is_some_and(|n| meta.offset >= *n) =>
            {
                next[meta.partition as usize] = meta.offset + 1;
                frames.push((meta, at, len));
                at += u64::from(len);
            }
            _ => {
                match skipped.last_mut() {
                    Some((_, end)) if *end == at => *end += 1,
                    _ => skipped.push((at, at + 1)),
                }
                at += 1;
            }
        }
    }
    Ok((frames, skipped))
}
