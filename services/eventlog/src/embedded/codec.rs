//! Bytes on disk: the frame of one record, the header of a segment, and the frame of the
//! version-1 log (one `records.log`), read once to migrate it.
//!
//! ```text
//! segment = header frame*
//! header  = "TERRASEG" version:u32le(2) partitions:u32le
//!           { first_offset:u64le } per partition, crc32(all before):u32le
//! frame   = len:u32le crc32(payload):u32le payload
//! payload = partition:u32le offset:u64le group_start:u64le timestamp_ms:i64le
//!           key_len:i32le (-1: no key) key
//!           header_count:u16le { name_len:u16le name value_len:u32le value }
//!           value (the rest)
//! ```
//! Each frame names its own offset (so a repair can leave a gap without moving any offset)
//! and where the group commit that wrote it starts in the segment (so recovery can tell a
//! write torn by a crash, which only the last group can be, from damage to a group that was
//! synced and acknowledged).

use bytes::{Buf, BufMut, Bytes};

use crate::{LogError, Record};

pub(super) const FRAME_HEADER: usize = 8;
/// partition, offset, group start, timestamp, key length, header count.
const FIXED: usize = 4 + 8 + 8 + 8 + 4 + 2;
/// Frames larger than this are treated as corruption when reading back.
pub(super) const MAX_FRAME: usize = 256 * 1024 * 1024;
const SEGMENT_MAGIC: &[u8; 8] = b"TERRASEG";
const SEGMENT_VERSION: u32 = 2;

/// What a frame says about itself, read without decoding the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FrameMeta {
    pub(super) partition: u32,
    pub(super) offset: u64,
    pub(super) group_start: u64,
    pub(super) timestamp_ms: i64,
}

/// Appends the frame of `record` to `out`.
pub(super) fn encode(record: &Record, meta: FrameMeta, out: &mut Vec<u8>) {
    let start = out.len();
    out.put_u64_le(0); // frame header, filled in below
    out.put_u32_le(meta.partition);
    out.put_u64_le(meta.offset);
    out.put_u64_le(meta.group_start);
    out.put_i64_le(meta.timestamp_ms);
    put_record(record, out);
    let payload_len = out.len() - start - FRAME_HEADER;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_record(record: &Record, out: &mut Vec<u8>) {
    match &record.key {
        Some(key) => {
            out.put_i32_le(key.len() as i32);
            out.put_slice(key);
        }
        None => out.put_i32_le(-1),
    }
    out.put_u16_le(record.headers.len() as u16);
    for (name, value) in &record.headers {
        out.put_u16_le(name.len() as u16);
        out.put_slice(name.as_bytes());
        out.put_u32_le(value.len() as u32);
        out.put_slice(value);
    }
    out.put_slice(&record.value);
}

/// The payload length a frame header announces, when it is plausible.
pub(super) fn announced_len(header: &[u8; FRAME_HEADER]) -> Option<usize> {
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    (FIXED..=MAX_FRAME).contains(&len).then_some(len)
}

/// Checks a payload against its frame header's checksum and reads its fixed fields.
pub(super) fn check(header: &[u8; FRAME_HEADER], payload: &[u8]) -> Option<FrameMeta> {
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if payload.len() < FIXED || crc32fast::hash(payload) != crc {
        return None;
    }
    let mut buf = payload;
    Some(FrameMeta {
        partition: buf.get_u32_le(),
        offset: buf.get_u64_le(),
        group_start: buf.get_u64_le(),
        timestamp_ms: buf.get_i64_le(),
    })
}

fn corrupt(what: &str) -> LogError {
    LogError::Corrupt(format!("record frame: {what}"))
}

/// Decodes one whole frame (header included) read back from a segment.
pub(super) fn decode(frame: Bytes) -> Result<(FrameMeta, Record), LogError> {
    if frame.len() < FRAME_HEADER {
        return Err(corrupt("short frame"));
    }
    let header: [u8; FRAME_HEADER] = frame[..FRAME_HEADER].try_into().expect("8 bytes");
    let meta =
        check(&header, &frame[FRAME_HEADER..]).ok_or_else(|| corrupt("checksum mismatch"))?;
    let record = decode_record(frame.slice(FRAME_HEADER + FIXED - 6..))?;
    Ok((meta, record))
}

/// Decodes `key_len key headers value`.
fn decode_record(mut buf: Bytes) -> Result<Record, LogError> {
    let need = |buf: &Bytes, n: usize| {
        if buf.remaining() < n {
            Err(corrupt("truncated field"))
        } else {
            Ok(())
        }
    };
    need(&buf, 4)?;
    let key_len = buf.get_i32_le();
    let key = if key_len < 0 {
        None
    } else {
        need(&buf, key_len as usize)?;
        Some(buf.split_to(key_len as usize))
    };
    need(&buf, 2)?;
    let count = buf.get_u16_le();
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        need(&buf, 2)?;
        let name_len = buf.get_u16_le() as usize;
        need(&buf, name_len + 4)?;
        let name = String::from_utf8(buf.split_to(name_len).to_vec())
            .map_err(|_| corrupt("header name is not UTF-8"))?;
        let value_len = buf.get_u32_le() as usize;
        need(&buf, value_len)?;
        headers.push((name, buf.split_to(value_len)));
    }
    Ok(Record {
        key,
        headers,
        value: buf,
    })
}

/// The header of a segment: where each partition's offsets continue in it.
pub(super) fn encode_segment_header(first_offsets: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(segment_header_len(first_offsets.len() as u32) as usize);
    out.put_slice(SEGMENT_MAGIC);
    out.put_u32_le(SEGMENT_VERSION);
    out.put_u32_le(first_offsets.len() as u32);
    for offset in first_offsets {
        out.put_u64_le(*offset);
    }
    let crc = crc32fast::hash(&out);
    out.put_u32_le(crc);
    out
}

pub(super) fn segment_header_len(partitions: u32) -> u64 {
    8 + 4 + 4 + 8 * u64::from(partitions) + 4
}

/// Reads a segment's header; `None` when it is not one (or damaged).
pub(super) fn decode_segment_header(bytes: &[u8], partitions: u32) -> Option<Vec<u64>> {
    let len = segment_header_len(partitions) as usize;
    if bytes.len() < len || &bytes[..8] != SEGMENT_MAGIC {
        return None;
    }
    let mut buf = &bytes[8..len];
    let crc_at = len - 4;
    if crc32fast::hash(&bytes[..crc_at])
        != u32::from_le_bytes(bytes[crc_at..len].try_into().expect("4 bytes"))
    {
        return None;
    }
    if buf.get_u32_le() != SEGMENT_VERSION || buf.get_u32_le() != partitions {
        return None;
    }
    Some((0..partitions).map(|_| buf.get_u64_le()).collect())
}

/// Version 1 (one `records.log`): `len crc payload` with
/// `payload = partition:u32le timestamp_ms:i64le record`, offsets implied by order.
pub(super) mod v1 {
    use bytes::{Buf, Bytes};

    use crate::{LogError, Record};

    /// `(partition, timestamp_ms, record)` of a checked payload.
    pub(in super::super) fn decode_payload(payload: Bytes) -> Result<(u32, i64, Record), LogError> {
        if payload.len() < 12 {
            return Err(super::corrupt("short frame"));
        }
        let mut buf = payload;
        let partition = buf.get_u32_le();
        let timestamp_ms = buf.get_i64_le();
        Ok((partition, timestamp_ms, super::decode_record(buf)?))
    }
}
