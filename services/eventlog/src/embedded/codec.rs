//! The frame of one record in the log file, and crash recovery.
//!
//! ```text
//! frame   = len:u32le crc32(payload):u32le payload
//! payload = partition:u32le timestamp_ms:i64le key_len:i32le (-1: no key) key
//!           header_count:u16le { name_len:u16le name value_len:u32le value }
//!           value (the rest)
//! ```

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use bytes::{Buf, BufMut, Bytes};

use super::Span;
use crate::{LogError, Record};

const FRAME_HEADER: usize = 8;
/// Frames larger than this are treated as corruption when reading back.
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Appends the frame of `record` in `partition` to `out`.
pub(super) fn encode(record: &Record, partition: u32, timestamp_ms: i64, out: &mut Vec<u8>) {
    let start = out.len();
    out.put_u64_le(0); // frame header, filled in below
    out.put_u32_le(partition);
    out.put_i64_le(timestamp_ms);
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
    let payload_len = out.len() - start - FRAME_HEADER;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes one whole frame (header included) read back from the log file.
pub(super) fn decode(frame: Bytes) -> Result<(i64, Record), LogError> {
    let corrupt = |what: &str| LogError::Corrupt(format!("record frame: {what}"));
    if frame.len() < FRAME_HEADER {
        return Err(corrupt("short frame"));
    }
    let mut buf = frame.slice(FRAME_HEADER..);
    if crc32fast::hash(&buf) != u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes")) {
        return Err(corrupt("checksum mismatch"));
    }
    let need = |buf: &Bytes, n: usize| {
        if buf.remaining() < n {
            Err(corrupt("truncated field"))
        } else {
            Ok(())
        }
    };
    need(&buf, 16)?;
    let _partition = buf.get_u32_le();
    let timestamp_ms = buf.get_i64_le();
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
    Ok((
        timestamp_ms,
        Record {
            key,
            headers,
            value: buf,
        },
    ))
}

/// Opens the log file for appending and scans it: returns the file and, per partition, the
/// span of every intact frame. Anything after the last intact frame (a write torn by a
/// crash, which was never acknowledged) is cut off.
pub(super) fn recover(path: &Path, partitions: u32) -> Result<(File, Vec<Vec<Span>>), LogError> {
    let context = || format!("failed to open {}", path.display());
    let file = crate::private_fs::options()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(LogError::io(context()))?;
    let file_len = file.metadata().map_err(LogError::io(context()))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut index = vec![Vec::new(); partitions as usize];
    let mut at = 0u64;
    let mut header = [0u8; FRAME_HEADER];
    let mut payload = Vec::new();
    while at + FRAME_HEADER as u64 <= file_len {
        reader
            .read_exact(&mut header)
            .map_err(LogError::io(context()))?;
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        if !(16..=MAX_FRAME).contains(&len) || at + (FRAME_HEADER + len) as u64 > file_len {
            break;
        }
        payload.resize(len, 0);
        reader
            .read_exact(&mut payload)
            .map_err(LogError::io(context()))?;
        if crc32fast::hash(&payload)
            != u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"))
        {
            break;
        }
        let partition = u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes"));
        let Some(spans) = index.get_mut(partition as usize) else {
            return Err(LogError::Corrupt(format!(
                "{}: frame at byte {at} names partition {partition} of {partitions}",
                path.display()
            )));
        };
        let frame_len = (FRAME_HEADER + len) as u32;
        spans.push(Span {
            start: at,
            len: frame_len,
        });
        at += u64::from(frame_len);
    }
    drop(reader);
    if at < file_len {
        tracing::warn!(path = %path.display(), kept = at, dropped = file_len - at, "cutting a torn tail off the embedded log");
        file.set_len(at).map_err(LogError::io(context()))?;
        file.sync_all().map_err(LogError::io(context()))?;
    }
    Ok((file, index))
}
