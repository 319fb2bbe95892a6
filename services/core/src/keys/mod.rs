//! Payload ids and object keys (terra-wire-format §6-7). The SQL projection's `payload_id`
//! and the object store key are both derived here, so they always agree:
//!
//! ```text
//! <version>/<data_type>/<user_id>-<start_time>      data record (start time in UTC, seconds)
//! <version>/<event_type>/<user_id>-<timestamp>      any other event (generation time in UTC,
//!                                                   seconds, as in Terra's bucket examples)
//! <version>/<event_type>/<timestamp>~<id>           any other event without a user
//! ```
//!
//! Suffix rule (never overwrite): these are *base* ids. The first identity (natural key) of
//! a user that claims a base id keeps it, Terra-shaped; any other identity whose base id is
//! already claimed gets [`with_suffix`]: `~` and the first 12 hex digits of its identity
//! (`…-2026-03-12T14:30:00Z~1f3a9c04be22`). Claims are made in log order by each sink from
//! its own state (the SQL payload index, the object store's claim markers) and never move,
//! so a re-delivery resolves to the same id and both sinks agree. Events without a user have no order
//! between them (they spread over partitions) and no Terra table row: their id always
//! carries the suffix.
//!
//! The object key is the payload id plus `.json`, under an optional prefix. Every segment
//! is untrusted text: it is percent-encoded (only `A-Z a-z 0-9 - _` pass through) and
//! bounded in length, so a hostile `user_id` (`../`, `/`, NUL, 10 kB long) can neither leave
//! its prefix nor break the 1,024-byte key limit of S3/GCS. Nothing is ever rejected.

use sha2::{Digest, Sha256};

use crate::DataRecord;

/// The payload schema version Terra sends today, used when a body has none.
pub const DEFAULT_VERSION: &str = "2022-03-16";

/// Longest encoded user id segment.
pub const MAX_USER_SEGMENT: usize = 100;
const MAX_TYPE_SEGMENT: usize = 64;
const MAX_VERSION_SEGMENT: usize = 32;
const MAX_TIME_SEGMENT: usize = 64;
/// Upper bound of any payload id (sum of the segment bounds and separators).
pub const MAX_PAYLOAD_ID_LEN: usize =
    MAX_VERSION_SEGMENT + MAX_TYPE_SEGMENT + MAX_USER_SEGMENT + MAX_TIME_SEGMENT + 3 + SUFFIX_LEN;
/// Hex digits of the identity in a suffix.
const SUFFIX_HEX: usize = 12;
/// `~` and the hex digits.
pub const SUFFIX_LEN: usize = SUFFIX_HEX + 1;

/// `base` made unique for `identity` (a hex digest; its first 12 digits are used): see the
/// module's suffix rule.
pub fn with_suffix(base: &str, identity: &str) -> String {
    let hex: String = identity.chars().take(SUFFIX_HEX).collect();
    debug_assert!(hex.len() == SUFFIX_HEX && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    format!("{base}~{hex}")
}

/// Percent-encodes `raw` so the result contains only `A-Z a-z 0-9 - _ %` and, when that is
/// longer than `max`, keeps a prefix and appends `~` and a hash of the whole raw value.
/// Injective: distinct inputs give distinct segments (the `~` form cannot come out of the
/// encoding, and differing long inputs differ in their hash).
pub fn encode_segment(raw: &str, max: usize) -> String {
    debug_assert!(max > 30, "segment bound too small for the hashed form");
    let mut out = String::with_capacity(raw.len().min(max));
    for &byte in raw.as_bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.is_empty() {
        // an empty id still needs a visible, non-empty segment
        return "~empty".to_owned();
    }
    if out.len() <= max {
        return out;
    }
    let hash = hex::encode(&Sha256::digest(raw.as_bytes())[..12]);
    let mut keep = max - hash.len() - 1;
    // never cut a %XX escape in half
    while out.as_bytes()[..keep]
        .iter()
        .rev()
        .take(2)
        .any(|&b| b == b'%')
    {
        keep -= 1;
    }
    out.truncate(keep);
    out.push('~');
    out.push_str(&hash);
    out
}

/// The type folder: Terra's dotted types (`lab_report.completed`) as they are; anything else
/// through [`encode_segment`]. Still injective: `encode_segment` never outputs a `.`, and a
/// kept type is made of `a-z 0-9 _` runs joined by single dots (never `.` or `..`).
fn type_segment(event_type: &str) -> String {
    let dotted = event_type.len() <= MAX_TYPE_SEGMENT
        && event_type.contains('.')
        && event_type.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    if dotted {
        event_type.to_owned()
    } else {
        encode_segment(event_type, MAX_TYPE_SEGMENT)
    }
}

/// The `version` folder of a body (its `version` field, or today's default).
fn version_segment(version: Option<&str>) -> String {
    encode_segment(version.unwrap_or(DEFAULT_VERSION), MAX_VERSION_SEGMENT)
}

/// Payload id of one data record.
pub fn data_payload_id(
    version: Option<&str>,
    data_type: &str,
    user_id: &str,
    record: &DataRecord,
) -> String {
    let time = record
        .start_time
        .as_deref()
        .map(|t| iso_to_utc_seconds(t).unwrap_or_else(|| t.to_owned()))
        .unwrap_or_else(|| record.natural_key.clone());
    format!(
        "{}/{}/{}-{}",
        version_segment(version),
        encode_segment(data_type, MAX_TYPE_SEGMENT),
        encode_segment(user_id, MAX_USER_SEGMENT),
        encode_time(&time),
    )
}

/// Base payload id of any other event, generated at `generated_at_ms` (unix milliseconds:
/// the ordering timestamp when Terra sent one, else the time it was received), to the second.
/// Without a user the caller adds [`with_suffix`] (the module's suffix rule).
pub fn event_payload_id(
    version: Option<&str>,
    event_type: &str,
    user_id: Option<&str>,
    generated_at_ms: i64,
) -> String {
    let event_type = if event_type.is_empty() {
        "unknown"
    } else {
        event_type
    };
    let time = encode_time(&unix_ms_to_utc_seconds(generated_at_ms));
    let folder = format!("{}/{}", version_segment(version), type_segment(event_type));
    match user_id {
        Some(user) => format!("{folder}/{}-{time}", encode_segment(user, MAX_USER_SEGMENT)),
        None => format!("{folder}/{time}"),
    }
}

/// Object key of a payload id: `<prefix>/<payload_id>.json` (no prefix: no leading slash).
pub fn object_key(prefix: &str, payload_id: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{payload_id}.json")
    } else {
        format!("{prefix}/{payload_id}.json")
    }
}

/// Times keep `:` and `.` readable (as in Terra's own keys); anything else is encoded.
fn encode_time(time: &str) -> String {
    let readable = time.len() <= MAX_TIME_SEGMENT
        && !time.starts_with('.')
        && time
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'-' | b'+'));
    if readable {
        time.to_owned()
    } else {
        encode_segment(time, MAX_TIME_SEGMENT)
    }
}

/// `2026-10-03T23:12:00.000000+02:00` → `2026-10-03T21:12:00Z`; `None` when the text is not
/// an ISO-8601 date-time with an offset or `Z`.
pub fn iso_to_utc_seconds(text: &str) -> Option<String> {
    let secs = parse_iso_seconds(text)?;
    Some(format_utc(secs, None))
}

/// Unix milliseconds as ISO-8601 UTC with milliseconds: `2026-10-03T21:12:00.125Z`.
/// Now, as Unix milliseconds (0 on a clock before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn unix_ms_to_utc(ms: i64) -> String {
    format_utc(ms.div_euclid(1000), Some(ms.rem_euclid(1000)))
}

/// Unix milliseconds as ISO-8601 UTC to the second: `2026-10-03T21:12:00Z` (the form of
/// [`iso_to_utc_seconds`], so both sort together).
pub fn unix_ms_to_utc_seconds(ms: i64) -> String {
    format_utc(ms.div_euclid(1000), None)
}

fn parse_iso_seconds(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let minutes =
                num(text.len() - 5..text.len() - 3)? * 60 + num(text.len() - 2..text.len())?;
            if rest.starts_with('-') {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second - offset * 60)
}

fn format_utc(secs: i64, millis: Option<i64>) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rem / 3_600, rem % 3_600 / 60, rem % 60);
    match millis {
        Some(ms) => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z"),
        None => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
    }
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests;
