//! What one log record means for the projections, derived from the envelope alone (so a
//! replay derives the same thing): the users it creates or moves through the lifecycle, the
//! payload rows it writes (one per data record, one for any other event), or why it is
//! poison. Pure and sink-independent; the SQL sink (and later the object sink) write it.

use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};
use terra_core::classify::UserFields;
use terra_core::envelope::Envelope;
use terra_core::{EventGroup, keys};
use terra_eventlog::{Consumed, Position};

/// Longest text field written to a `TEXT` column (MySQL's TEXT holds 64 KiB; real values are
/// far shorter, so anything longer is not Terra data).
pub const MAX_FIELD: usize = 4096;

/// One log record, decoded and planned.
#[derive(Debug, Clone)]
pub struct Planned {
    pub position: Position,
    /// The envelope id, or empty when the record did not decode.
    pub envelope_id: String,
    pub event_type: String,
    pub received_at_ms: i64,
    pub body_size: i64,
    /// Hex SHA-256 of the body (empty when the record did not decode).
    pub body_sha256: String,
    /// The exact webhook body (kept for dead letters).
    pub body: bytes::Bytes,
    /// Where the record came from and the headers Terra sent with it (empty when the record
    /// did not decode).
    pub origin: Arc<Origin>,
    pub plan: Plan,
}

#[derive(Debug, Clone)]
pub enum Plan {
    /// A record no projection can use: kept in the dead-letter table with the reason.
    Dead(DeadLetter),
    Event(EventPlan),
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub reason: String,
}

/// What a valid event writes.
#[derive(Debug, Clone, Default)]
pub struct EventPlan {
    /// Users the event mentions, to create when missing (never overwriting).
    pub seen_users: Vec<UserInfo>,
    /// Lifecycle changes (authentication events), in body order.
    pub lifecycle: Vec<LifecycleChange>,
    /// Payload rows (data records, or the event itself).
    pub payloads: Vec<PayloadRow>,
}

/// The fields of a Terra `user` object the tables keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub user_id: String,
    pub provider: String,
    pub reference_id: Option<String>,
    pub scopes: Option<String>,
    /// `user.created_at`, or when the event was generated when the body has none.
    pub created_at: String,
}

/// One user's step through the lifecycle.
#[derive(Debug, Clone)]
pub struct LifecycleChange {
    pub user: UserInfo,
    /// New `terra_users.state`; `None` keeps the current state (permission_change).
    pub state: Option<&'static str>,
    /// `user`, `old_user` or `new_user`: the user's part in the event.
    pub role: &'static str,
    pub status: Option<String>,
    /// Identity of this history row: stable across Terra's re-deliveries.
    pub event_id: String,
    /// The misc payload holding the event, and its identity (the sink may give the payload a
    /// suffixed id, see `terra_core::keys`: the history row follows it).
    pub payload_id: String,
    pub payload_identity: String,
}

/// `LifecycleChange::role` of an authentication event without a user (`auth_cancelled`):
/// history only, under the user id `""`, the user-less history.
pub use terra_core::NO_USER_ROLE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    Data,
    Misc,
}

impl PayloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Misc => "misc",
        }
    }
}

/// One row of `terra_data_payloads` or `terra_misc_payloads`, with what the payload index
/// keeps about it.
#[derive(Debug, Clone)]
pub struct PayloadRow {
    pub kind: PayloadKind,
    /// Hex SHA-256 of (kind, user, type, natural key): the last-writer-wins identity.
    pub identity: String,
    pub payload_id: String,
    pub user_id: Option<String>,
    /// Data rows: the event type; misc rows: the body's `data_type`, when it has one.
    pub data_type: Option<String>,
    /// The event `type` (misc rows' `payload_type`).
    pub event_type: String,
    pub natural_key: String,
    pub record_index: i64,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    /// `start_time` in UTC (`2026-10-03T21:12:00Z`), sortable, for time-range queries.
    pub start_utc: Option<String>,
    /// When Terra generated the payload (ISO-8601 UTC).
    pub created_at: String,
    /// Last-writer-wins version: ordering timestamp (or receipt time), then log position,
    /// then record index.
    pub version: Version,
    pub ordering_ts_ms: Option<i64>,
    pub body_sha256: String,
    pub terra_trace_id: Option<String>,
    pub terra_reference: Option<String>,
    /// The customer's reference: the user's `reference_id`, else the body's own
    /// (`auth_cancelled`'s top level, a lab report's `data.reference_id`). For pings.
    pub reference_id: Option<String>,
    /// True when `payload_id` is a base id the sink claims for this identity (suffixed when
    /// another identity holds it); false when it is final (events without a user).
    pub claims: bool,
}

/// How much of a record a sink needs planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlanDepth {
    /// Classified, with the rows of the SQL tables and the objects' keys (the SQL and object
    /// projections).
    #[default]
    Full,
    /// The envelope only: its id, type, body, origin and headers; every decoded record is a
    /// [`Plan::Event`] with nothing in it. The webhook destination forwards bodies as Terra
    /// sent them and classifies nothing: the rows and keys would be built for nothing.
    Envelope,
}

/// Decodes and plans one consumed record. Never fails: what cannot be projected is a
/// [`Plan::Dead`] with the reason.
pub fn plan(consumed: &Consumed) -> Planned {
    plan_to(consumed, PlanDepth::Full)
}

/// [`plan`] to the depth a sink needs.
pub fn plan_to(consumed: &Consumed, depth: PlanDepth) -> Planned {
    let position = consumed.position;
    // from `Bytes`, so the body is a slice of the record (from `&[u8]` prost copies it)
    let envelope = match Envelope::decode(consumed.record.value.clone()) {
        Ok(envelope) => envelope,
        Err(err) => {
            return Planned {
                position,
                envelope_id: String::new(),
                event_type: String::new(),
                received_at_ms: consumed.timestamp_ms,
                body_size: 0,
                body_sha256: String::new(),
                body: bytes::Bytes::new(),
                origin: Arc::default(),
                plan: Plan::Dead(DeadLetter {
                    reason: format!("log record is not a terra.ingest.v1.Envelope: {err}"),
                }),
            };
        }
    };
    let mut planned = plan_envelope_to(position, &envelope, depth);
    Arc::make_mut(&mut planned.origin).traceparent = Origin::traceparent_of(consumed);
    planned
}

/// Plans a decoded envelope.
pub fn plan_envelope(position: Position, envelope: &Envelope) -> Planned {
    plan_envelope_to(position, envelope, PlanDepth::Full)
}

/// [`plan_envelope`] to the depth a sink needs.
pub fn plan_envelope_to(position: Position, envelope: &Envelope, depth: PlanDepth) -> Planned {
    let received_at_ms = envelope
        .received_at
        .as_ref()
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    // the ingress hashed the body it verified; older or hand-made records may lack it
    let body_sha256 = match envelope.body_sha256.len() {
        32 => hex::encode(&envelope.body_sha256),
        _ => hex::encode(Sha256::digest(&envelope.body)),
    };
    let dead = |reason: String| Plan::Dead(DeadLetter { reason });
    let plan = match depth {
        PlanDepth::Envelope => Plan::Event(EventPlan::default()),
        PlanDepth::Full => match event_plan(position, envelope, received_at_ms, &body_sha256) {
            Ok(plan) => match fields::check_fields(&plan) {
                Ok(()) => Plan::Event(plan),
                Err(reason) => dead(reason),
            },
            Err(reason) => dead(reason),
        },
    };
    Planned {
        position,
        envelope_id: envelope.envelope_id.clone(),
        event_type: envelope.event_type.clone(),
        received_at_ms,
        body_size: envelope.body.len() as i64,
        body_sha256,
        body: envelope.body.clone(),
        origin: Arc::new(Origin::of_envelope(envelope)),
        plan,
    }
}

fn event_plan(
    position: Position,
    envelope: &Envelope,
    received_at_ms: i64,
    body_sha256: &str,
) -> Result<EventPlan, String> {
    if !envelope.body_is_json {
        return Err("body is not JSON (kept as received)".to_owned());
    }
    // the one parse of the body
    let classification =
        terra_core::classify(&envelope.body).map_err(|_| "body is not JSON".to_owned())?;
    let generated_ms = envelope.ordering_timestamp_ms.unwrap_or(received_at_ms);
    let generated_iso = keys::unix_ms_to_utc(generated_ms);
    let version_of = |index: i64| Version {
        ts_ms: generated_ms,
        partition: i64::from(position.partition),
        offset: position.offset as i64,
        index,
    };
    let user_info = |object: &Option<UserFields>| -> Option<UserInfo> {
        let object = object.as_ref()?;
        Some(UserInfo {
            user_id: object.user_id.clone()?,
            provider: object
                .provider
                .clone()
                .unwrap_or_else(|| "UNKNOWN".to_owned()),
            reference_id: object.reference_id.clone(),
            scopes: object.scopes.clone(),
            created_at: object
                .created_at
                .clone()
                .unwrap_or_else(|| generated_iso.clone()),
        })
    };
    let event_type = classification.event_type.as_str();
    let version = classification.version.as_deref();
    let mut plan = EventPlan::default();
    for object in [&classification.user, &classification.new_user] {
        if let Some(user) = user_info(object) {
            plan.seen_users.push(user);
            break;
        }
    }
    let reference_id = classification
        .user
        .as_ref()
        .or(classification.new_user.as_ref())
        .and_then(|u| u.reference_id.clone())
        .or_else(|| classification.reference_id.clone());
    let misc_payload_id = keys::event_payload_id(
        version,
        event_type,
        classification.user_id.as_deref(),
        generated_ms,
    );

    if classification.group == EventGroup::Data && !terra_core::is_report_scoped(event_type) {
        let user_id = classification
            .user_id
            .clone()
            .ok_or_else(|| format!("{event_type} event without a user"))?;
        for record in &classification.records {
            let natural_key = record.natural_key.clone();
            plan.payloads.push(PayloadRow {
                kind: PayloadKind::Data,
                identity: identity(PayloadKind::Data, Some(&user_id), event_type, &natural_key),
                payload_id: keys::data_payload_id(version, event_type, &user_id, record),
                user_id: Some(user_id.clone()),
                data_type: Some(event_type.to_owned()),
                event_type: event_type.to_owned(),
                // sortable and never empty: records without a parseable start sort by
                // generation time
                start_utc: record
                    .start_time
                    .as_deref()
                    .and_then(keys::iso_to_utc_seconds)
                    .or_else(|| Some(keys::unix_ms_to_utc_seconds(generated_ms))),
                start_time: record.start_time.clone(),
                end_time: record.end_time.clone(),
                natural_key,
                record_index: record.index as i64,
                created_at: generated_iso.clone(),
                version: version_of(record.index as i64),
                ordering_ts_ms: envelope.ordering_timestamp_ms,
                body_sha256: body_sha256.to_owned(),
                terra_trace_id: envelope.terra_trace_id.clone(),
                terra_reference: envelope.terra_reference.clone(),
                reference_id: reference_id.clone(),
                claims: true,
            });
        }
        return Ok(plan);
    }

    // any other event is one misc row. Its identity: the body's `event_id` where Terra
    // names it the de-duplication key (lab reports: a re-delivery is a new delivery, new
    // trace id, same event id), else the trace id Terra's retries share, else the body's
    // hash (a retry without a trace id repeats the same bytes)
    let natural_key = classification
        .event_id
        .clone()
        .filter(|_| terra_core::is_report_scoped(event_type))
        .or_else(|| envelope.terra_trace_id.clone())
        .unwrap_or_else(|| format!("sha256:{body_sha256}"));
    let misc_identity = identity(
        PayloadKind::Misc,
        classification.user_id.as_deref(),
        event_type,
        &natural_key,
    );
    // without a user: no Terra row and no order against other such events, so the id is
    // final with its suffix (`terra_core::keys`, suffix rule)
    let claims = classification.user_id.is_some();
    let misc_payload_id = if claims {
        misc_payload_id
    } else {
        keys::with_suffix(&misc_payload_id, &misc_identity)
    };
    plan.payloads.push(PayloadRow {
        kind: PayloadKind::Misc,
        identity: misc_identity.clone(),
        payload_id: misc_payload_id.clone(),
        user_id: classification.user_id.clone(),
        data_type: classification.data_type.clone(),
        event_type: event_type.to_owned(),
        natural_key: natural_key.clone(),
        record_index: 0,
        start_time: None,
        end_time: None,
        start_utc: Some(keys::unix_ms_to_utc_seconds(generated_ms)),
        created_at: generated_iso.clone(),
        version: version_of(0),
        ordering_ts_ms: envelope.ordering_timestamp_ms,
        body_sha256: body_sha256.to_owned(),
        terra_trace_id: envelope.terra_trace_id.clone(),
        terra_reference: envelope.terra_reference.clone(),
        reference_id: reference_id.clone(),
        claims,
    });

    if classification.group == EventGroup::Authentication {
        let status = classification.status.clone();
        let change =
            |user: UserInfo, role: &'static str, state: Option<&'static str>| LifecycleChange {
                event_id: identity(PayloadKind::Misc, Some(&user.user_id), role, &natural_key),
                user,
                state,
                role,
                status: status.clone(),
                payload_id: misc_payload_id.clone(),
                payload_identity: misc_identity.clone(),
            };
        match event_type {
            "user_reauth" => {
                if let Some(old) = user_info(&classification.old_user) {
                    plan.lifecycle
                        .push(change(old, "old_user", Some("user_reauth")));
                }
                if let Some(new) = user_info(&classification.new_user) {
                    plan.lifecycle.push(change(new, "new_user", Some("active")));
                }
            }
            _ if classification.user_id.is_none() => {
                // `auth_cancelled` (and any authentication event without a user): kept in
                // the user-less history, moving no user
                let nobody = UserInfo {
                    user_id: String::new(),
                    provider: String::new(),
                    reference_id: reference_id.clone(),
                    scopes: None,
                    created_at: generated_iso.clone(),
                };
                plan.lifecycle.push(change(nobody, NO_USER_ROLE, None));
            }
            _ => {
                if let Some(mut user) = user_info(&classification.user) {
                    let state = lifecycle_state(event_type, status.as_deref());
                    if event_type == "permission_change" {
                        user.scopes = Some(apply_scope_change(
                            user.scopes.as_deref().unwrap_or(""),
                            classification.scopes_added.as_deref().unwrap_or(""),
                            classification.scopes_removed.as_deref().unwrap_or(""),
                        ));
                    }
                    plan.lifecycle.push(change(user, "user", state));
                }
            }
        }
    }
    Ok(plan)
}

/// `terra_users.state` after an authentication event (`None`: unchanged).
pub fn lifecycle_state(event_type: &str, status: Option<&str>) -> Option<&'static str> {
    match (event_type, status) {
        ("auth", Some("error")) => Some("auth_failed"),
        ("auth", _) => Some("active"),
        ("deauth", _) => Some("deauth"),
        ("access_revoked", _) => Some("access_revoked"),
        ("connection_error", _) => Some("connection_error"),
        ("google_no_datasource", _) => Some("google_no_datasource"),
        ("user_reauth", _) => Some("user_reauth"),
        _ => None,
    }
}

/// `scopes` with `added` joined and `removed` taken away (comma lists; order kept).
pub fn apply_scope_change(scopes: &str, added: &str, removed: &str) -> String {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let removed = split(removed);
    let mut out: Vec<String> = split(scopes)
        .into_iter()
        .filter(|s| !removed.contains(s))
        .collect();
    for scope in split(added) {
        if !out.contains(&scope) && !removed.contains(&scope) {
            out.push(scope);
        }
    }
    out.join(",")
}

/// The last-writer-wins identity of a payload.
pub fn identity(kind: PayloadKind, user_id: Option<&str>, event_type: &str, key: &str) -> String {
    let mut hash = Sha256::new();
    for part in [
        kind.as_str(),
        user_id.unwrap_or("\u{0}none"),
        event_type,
        key,
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

mod fields;
mod origin;
#[cfg(test)]
mod tests;
mod version;

pub use origin::Origin;
pub use version::{BadVersion, Version};
