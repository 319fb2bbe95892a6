//! Classification of a webhook body (terra-wire-format §4-5): the typed view of a body that
//! every service reads, parsed once: event type and group, the user(s) it is about with the
//! fields Terra's tables keep, and for data events one [`DataRecord`] per record with its
//! natural key and period. Any JSON classifies; an unknown `type` is [`EventGroup::Other`],
//! never an error. Only a body that is not JSON at all is an error ([`NotJson`]).
//!
//! Two paths give the same answer: a typed, borrowing parse that skips everything it does
//! not need (`fast`, the ingress's hot path) and a `serde_json::Value` walk that copes with
//! any shape (used when the typed parse refuses the body, or a record needs its content
//! hashed).

mod fast;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Event groups of terra-wire-format §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventGroup {
    Authentication,
    Data,
    DataRequest,
    Misc,
    Other,
}

impl EventGroup {
    /// The group of an event `type`; unknown types are `Other`.
    pub fn of(event_type: &str) -> Self {
        match event_type {
            "auth"
            | "auth_cancelled"
            | "deauth"
            | "user_reauth"
            | "access_revoked"
            | "connection_error"
            | "google_no_datasource"
            | "permission_change" => Self::Authentication,
            "activity" | "athlete" | "body" | "daily" | "menstruation" | "nutrition" | "sleep"
            | "planned_workout" | "hormone" | "health_observation" | "route" => Self::Data,
            // Terra's OpenAPI webhook `lab_report`: "lab_report data event", report-scoped,
            // without a user (projected as other payloads, see `is_report_scoped`)
            "lab_report.completed" | "lab_report.failed" => Self::Data,
            "large_request_processing"
            | "large_request_sending"
            | "rate_limit_hit"
            | "processing" => Self::DataRequest,
            // `s3_upload`: the name of the same event in the OpenAPI spec's `EventType` enum
            "healthcheck" | "s3_payload" | "s3_upload" => Self::Misc,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::Data => "data",
            Self::DataRequest => "data_request",
            Self::Misc => "misc",
            Self::Other => "other",
        }
    }
}

/// Data events about a report rather than a user (Terra's lab reports: no `user`, no
/// `version`, one event per report, de-duplicated on the body's `event_id`). They are
/// projected as one other payload each, never per record.
pub fn is_report_scoped(event_type: &str) -> bool {
    event_type.starts_with("lab_report.")
}

/// The body is not parseable JSON (it is still stored, flagged, by the ingress).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("body is not valid JSON")]
pub struct NotJson;

/// What a body is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The body's `type`, verbatim; empty when absent or not a string.
    pub event_type: String,
    pub group: EventGroup,
    /// `user.user_id`, or `new_user.user_id` for `user_reauth`. Untrusted text.
    pub user_id: Option<String>,
    /// `old_user.user_id` of `user_reauth`, when not null.
    pub old_user_id: Option<String>,
    /// The body's `version` (payload schema version).
    pub version: Option<String>,
    /// The body's `status` (`success`, `error`, `warning`, ...).
    pub status: Option<String>,
    /// The body's `reference` (data-request chunks).
    pub reference: Option<String>,
    /// Data records of a data event, in body order (empty otherwise, or for empty `data`).
    pub records: Vec<DataRecord>,
    /// The `user`, `new_user` and `old_user` objects (`None` when absent or not objects).
    pub user: Option<UserFields>,
    pub new_user: Option<UserFields>,
    pub old_user: Option<UserFields>,
    /// `permission_change`'s scope lists (comma separated).
    pub scopes_added: Option<String>,
    pub scopes_removed: Option<String>,
    /// The body's `data_type` (misc events that carry one).
    pub data_type: Option<String>,
    /// The body's `event_id` (lab reports: stable across re-deliveries, the de-duplication
    /// key Terra names).
    pub event_id: Option<String>,
    /// The customer's reference the event carries without a `user`: top-level
    /// `reference_id` (`auth_cancelled`) or `data.reference_id` (lab reports).
    pub reference_id: Option<String>,
}

/// The fields of one Terra `user` object the tables keep. Untrusted text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFields {
    /// A string, or a number as its JSON text.
    pub user_id: Option<String>,
    pub provider: Option<String>,
    pub reference_id: Option<String>,
    pub scopes: Option<String>,
    pub created_at: Option<String>,
}

/// One record of a data event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRecord {
    /// Position in `data` (0 for `athlete`).
    pub index: usize,
    /// Identity of the record per user and type (terra-wire-format §5).
    pub natural_key: String,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
}

/// Classifies a raw body. Errors only when it is not JSON.
pub fn classify(body: &[u8]) -> Result<Classification, NotJson> {
    if let Some(classification) = fast::classify(body) {
        return Ok(classification);
    }
    classify_slow(body)
}

/// What an envelope carries of its body's classification (the ingress's hot path): the same
/// answer as [`classify`] gives for these fields, without reading the data records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeFields {
    pub event_type: String,
    pub group: EventGroup,
    pub user_id: Option<String>,
    pub old_user_id: Option<String>,
    pub version: Option<String>,
}

impl From<Classification> for EnvelopeFields {
    fn from(c: Classification) -> Self {
        Self {
            event_type: c.event_type,
            group: c.group,
            user_id: c.user_id,
            old_user_id: c.old_user_id,
            version: c.version,
        }
    }
}

/// The envelope's fields of a raw body. Errors only when it is not JSON, as [`classify`].
/// Where the typed path declines, the whole typed classification would decline too (it
/// checks the same and more), so the `Value` path answers at once.
pub fn envelope_fields(body: &[u8]) -> Result<EnvelopeFields, NotJson> {
    match fast::envelope_fields(body) {
        Some(fields) => Ok(fields),
        None => classify_slow(body).map(EnvelopeFields::from),
    }
}

/// Whom an event is about, from the id `id` reads in each user object: `user`'s, else
/// `new_user`'s with `old_user`'s (`user_reauth`). One rule for every classification path.
fn user_ids<T>(
    user: &T,
    new_user: &T,
    old_user: &T,
    id: impl Fn(&T) -> Option<String>,
) -> (Option<String>, Option<String>) {
    match id(user) {
        Some(user) => (Some(user), None),
        None => (id(new_user), id(old_user)),
    }
}

/// Both paths apart (the fast one may decline), for the agreement fuzzing in `crate::fuzz`.
#[cfg(test)]
pub(crate) fn both_paths(body: &[u8]) -> (Option<Classification>, Result<Classification, NotJson>) {
    (fast::classify(body), classify_slow(body))
}

/// [`envelope_fields`]'s typed path alone (it may decline), for the fuzzing in `crate::fuzz`.
#[cfg(test)]
pub(crate) fn envelope_fast_path(body: &[u8]) -> Option<EnvelopeFields> {
    fast::envelope_fields(body)
}

/// The `Value` path alone.
fn classify_slow(body: &[u8]) -> Result<Classification, NotJson> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => parse_with_lone_surrogates(body).ok_or(NotJson)?,
    };
    Ok(classify_value(&value))
}

/// serde_json refuses `\ud800`-style escapes that are not valid UTF-16 pairs. Terra's bodies
/// should never carry them, but a hostile `user_id` might: classify a copy in which every
/// surrogate escape became U+FFFD rather than treating the body as non-JSON. The stored body
/// is untouched.
fn parse_with_lone_surrogates(body: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("\\u") {
        return None;
    }
    let mut cleaned = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\\") {
        cleaned.push_str(&rest[..at]);
        let tail = &rest[at..];
        let escape = tail.get(..6).filter(|e| {
            e.starts_with("\\u")
                && matches!(e.as_bytes()[2], b'd' | b'D')
                && matches!(e.as_bytes()[3], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
        });
        match escape {
            Some(_) => {
                cleaned.push_str("\\ufffd");
                rest = &tail[6..];
            }
            None => {
                // keep any other escape (including `\\`) whole so it is not re-read
                let len = tail.chars().nth(1).map_or(1, |c| 1 + c.len_utf8());
                cleaned.push_str(&tail[..len]);
                rest = &tail[len..];
            }
        }
    }
    cleaned.push_str(rest);
    serde_json::from_str(&cleaned).ok()
}

fn classify_value(value: &Value) -> Classification {
    let empty = Map::new();
    let top = value.as_object().unwrap_or(&empty);
    let text = |key: &str| top.get(key).and_then(Value::as_str).map(str::to_owned);
    let event_type = text("type").unwrap_or_default();
    let group = EventGroup::of(&event_type);
    let user_fields = |key: &str| {
        let user = top.get(key)?.as_object()?;
        let text = |key: &str| user.get(key).and_then(Value::as_str).map(str::to_owned);
        Some(UserFields {
            user_id: user.get("user_id").and_then(scalar_text),
            provider: text("provider"),
            reference_id: text("reference_id"),
            scopes: text("scopes"),
            created_at: text("created_at"),
        })
    };
    let (user, new_user, old_user) = (
        user_fields("user"),
        user_fields("new_user"),
        user_fields("old_user"),
    );
    let user_of = |fields: &Option<UserFields>| fields.as_ref().and_then(|u| u.user_id.clone());
    let (user_id, old_user_id) = user_ids(&user, &new_user, &old_user, user_of);
    let records = if group == EventGroup::Data && !is_report_scoped(&event_type) {
        data_records(&event_type, top)
    } else {
        Vec::new()
    };
    Classification {
        event_type,
        group,
        user_id,
        old_user_id,
        version: text("version"),
        status: text("status"),
        reference: text("reference"),
        records,
        user,
        new_user,
        old_user,
        scopes_added: text("scopes_added"),
        scopes_removed: text("scopes_removed"),
        data_type: text("data_type"),
        event_id: top.get("event_id").and_then(scalar_text),
        reference_id: text("reference_id").or_else(|| {
            top.get("data")?
                .as_object()?
                .get("reference_id")?
                .as_str()
                .map(str::to_owned)
        }),
    }
}

fn data_records(event_type: &str, top: &Map<String, Value>) -> Vec<DataRecord> {
    if event_type == "athlete" {
        // one `athlete` object per user; no period
        return match top.get("athlete") {
            Some(Value::Null) | None => Vec::new(),
            Some(_) => vec![DataRecord {
                index: 0,
                natural_key: "athlete".to_owned(),
                start_time: None,
                end_time: None,
            }],
        };
    }
    let Some(Value::Array(items)) = top.get("data") else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let field = |key: &str| record_field(item, key);
            let start_time = start_of(&field);
            let end_time = field("end_time");
            DataRecord {
                index,
                natural_key: natural_key(event_type, &field, start_time.as_deref(), item),
                start_time,
                end_time,
            }
        })
        .collect()
}

/// Where a record's fields are, whatever its shape: `metadata.<key>` (every data type),
/// then the record's top level (`hormone`'s flat samples; the current `planned_workout`
/// shape's `planned_workout_id` and `planned_date`; `route`), then `details.metadata.<key>`
/// (the current `planned_workout`'s provider-side body). The keys read: `summary_id`,
/// `start_time`, `end_time`, `id`, `planned_date`, `timestamp`, `planned_workout_id`,
/// `route_id`.
fn record_field(item: &Value, key: &str) -> Option<String> {
    let at = |object: Option<&Value>| object.and_then(|o| o.get(key)).and_then(scalar_text);
    at(item.get("metadata"))
        .or_else(|| at(Some(item)))
        .or_else(|| at(item.get("details").and_then(|d| d.get("metadata"))))
}

/// A record's period start: `start_time`, else a planned workout's `planned_date`, else a
/// flat sample's `timestamp` (hormone).
pub(crate) fn start_of(field: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    field("start_time")
        .or_else(|| field("planned_date"))
        .or_else(|| field("timestamp"))
}

/// terra-wire-format §5, with fallbacks so that every record gets a key that is stable
/// across re-deliveries: the documented field, then the start time, then a hash of the
/// record's JSON (identical content, identical key).
fn natural_key(
    event_type: &str,
    field: &dyn Fn(&str) -> Option<String>,
    start_time: Option<&str>,
    item: &Value,
) -> String {
    key_without_hash(event_type, field, start_time).unwrap_or_else(|| {
        let digest = Sha256::digest(serde_json::to_vec(item).unwrap_or_default());
        format!("sha256:{}", hex::encode(&digest[..16]))
    })
}

/// The documented key, else the start time; `None` when only a content hash is left.
fn key_without_hash(
    event_type: &str,
    field: &dyn Fn(&str) -> Option<String>,
    start_time: Option<&str>,
) -> Option<String> {
    // Terra's de-duplication rules (docs/terra-compatibility.md, "identity" rows)
    let documented = match event_type {
        "activity" | "sleep" | "health_observation" => field("summary_id"),
        "daily" | "body" | "menstruation" => {
            // the date as sent, before any timezone conversion
            start_time.map(|t| t.chars().take(10).collect())
        }
        // "overwrite keyed on metadata.start_time" (the OpenAPI webhook `nutrition`)
        "nutrition" => start_time.map(str::to_owned),
        // flat samples keyed by their `timestamp`
        "hormone" => field("timestamp"),
        // current shape: `planned_workout_id`; older: `metadata.id`; provider-side only:
        // `details.metadata.id` (all found by `record_field`)
        "planned_workout" => field("planned_workout_id").or_else(|| field("id")),
        "route" => field("route_id").or_else(|| field("id")),
        _ => field("summary_id").or_else(|| field("id")),
    };
    documented.or_else(|| start_time.map(str::to_owned))
}

/// Strings as they are; numbers as their JSON text (some providers send numeric ids).
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_shapes;
