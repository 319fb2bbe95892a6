//! Every table of one projection and the columns the code names, written once. A rebuild
//! creates them all under a fresh prefix and swaps them in ([`crate::swap`]).

/// Terra's users table.
pub const TERRA_USERS: &str = "terra_users";
/// Terra's data payloads (one row per data record).
pub const TERRA_DATA_PAYLOADS: &str = "terra_data_payloads";
/// Terra's other payloads (one row per non-data event).
pub const TERRA_MISC_PAYLOADS: &str = "terra_misc_payloads";
/// Terra's view of the misc payloads under its older name.
pub const TERRA_OTHER_PAYLOADS: &str = "terra_other_payloads";
/// Next log offset per partition, written in the same transaction as the rows.
pub const INGEST_POSITIONS: &str = "ingest_positions";
/// The payload index: one row per last-writer-wins identity.
pub const INGEST_PAYLOADS: &str = "ingest_payloads";
/// What terra-ingest keeps per user beside Terra's row.
pub const INGEST_USERS: &str = "ingest_users";
/// Every lifecycle step of every user.
pub const INGEST_USER_EVENTS: &str = "ingest_user_events";
/// Records no projection could use, with the reason and the body.
pub const INGEST_DEAD_LETTERS: &str = "ingest_dead_letters";
/// Applied migrations.
pub const INGEST_MIGRATIONS: &str = "ingest_migrations";
/// Misc rows of events without a user that an earlier version wrote into
/// [`TERRA_MISC_PAYLOADS`] (whose `user_id` is NOT NULL since), moved by migration.
pub const INGEST_MISC_WITHOUT_USER: &str = "ingest_misc_without_user";
/// The migrations applied to the webhook destination's tables.
pub const WEBHOOK_MIGRATIONS: &str = "webhook_migrations";
/// The webhook destination's consumed positions (the shape of `ingest_positions`).
pub const WEBHOOK_POSITIONS: &str = "webhook_positions";
/// Each event to deliver, with its body and forwarded headers.
pub const WEBHOOK_EVENTS: &str = "webhook_events";
/// Each endpoint's state.
pub const WEBHOOK_ENDPOINTS: &str = "webhook_endpoints";
/// One row per (event, endpoint) and its schedule.
pub const WEBHOOK_DELIVERIES: &str = "webhook_deliveries";
/// Every delivery attempt.
pub const WEBHOOK_ATTEMPTS: &str = "webhook_attempts";

/// Every table (not the view) of one projection, in creation order.
pub const TABLES: &[&str] = &[
    TERRA_USERS,
    TERRA_DATA_PAYLOADS,
    TERRA_MISC_PAYLOADS,
    INGEST_POSITIONS,
    INGEST_PAYLOADS,
    INGEST_USERS,
    INGEST_USER_EVENTS,
    INGEST_DEAD_LETTERS,
    INGEST_MISC_WITHOUT_USER,
    INGEST_MIGRATIONS,
];
/// The view over [`TERRA_MISC_PAYLOADS`].
pub const VIEW: &str = TERRA_OTHER_PAYLOADS;

/// `terra_users`, in Terra's column order.
pub const TERRA_USERS_COLUMNS: [&str; 6] = [
    "user_id",
    "reference_id",
    "created_at",
    "granted_scopes",
    "provider",
    "state",
];
/// `terra_data_payloads`, in Terra's column order.
pub const TERRA_DATA_PAYLOADS_COLUMNS: [&str; 6] = [
    "user_id",
    "data_type",
    "created_at",
    "payload_id",
    "start_time",
    "end_time",
];
/// `terra_misc_payloads` (and the view), in Terra's column order.
pub const TERRA_MISC_PAYLOADS_COLUMNS: [&str; 5] = [
    "user_id",
    "data_type",
    "payload_type",
    "created_at",
    "payload_id",
];
/// `ingest_positions`.
pub const INGEST_POSITIONS_COLUMNS: [&str; 3] = ["log_partition", "next_offset", "updated_at_ms"];
/// `ingest_payloads`; `row_key` (the identity) first.
pub const INGEST_PAYLOADS_COLUMNS: [&str; 21] = [
    "row_key",
    "kind",
    "payload_id",
    "user_id",
    "data_type",
    "event_type",
    "natural_key",
    "record_index",
    "start_time",
    "end_time",
    "start_utc",
    "envelope_id",
    "log_partition",
    "log_offset",
    "version_ts_ms",
    "ordering_ts_ms",
    "received_at_ms",
    "body_size",
    "body_sha256",
    "terra_trace_id",
    "terra_reference",
];
/// `ingest_dead_letters`.
pub const INGEST_DEAD_LETTERS_COLUMNS: [&str; 9] = [
    "log_partition",
    "log_offset",
    "envelope_id",
    "event_type",
    "reason",
    "received_at_ms",
    "body_sha256",
    "body",
    "dead_at_ms",
];

/// The last-writer-wins version of a payload row in [`INGEST_PAYLOADS`], most significant
/// first (see `terra_projector::Version`): ordering timestamp, log position, record index.
pub const PAYLOAD_VERSION_COLUMNS: [&str; 4] = [
    "version_ts_ms",
    "log_partition",
    "log_offset",
    "record_index",
];
/// The version of a user's current state in [`INGEST_USERS`], most significant first.
pub const USER_STATE_VERSION_COLUMNS: [&str; 3] =
    ["state_version_ts_ms", "state_partition", "state_offset"];
/// `ingest_user_events`.
pub const INGEST_USER_EVENTS_COLUMNS: [&str; 15] = [
    "event_id",
    "user_id",
    "event_type",
    "user_role",
    "status",
    "state",
    "provider",
    "reference_id",
    "scopes",
    "payload_id",
    "envelope_id",
    "log_partition",
    "log_offset",
    "version_ts_ms",
    "received_at_ms",
];
/// `ingest_users`: the user, when first seen and last updated, then the version of the
/// current state ([`USER_STATE_VERSION_COLUMNS`]).
pub const INGEST_USERS_COLUMNS: [&str; 6] = [
    "user_id",
    "first_seen_ms",
    "updated_at_ms",
    USER_STATE_VERSION_COLUMNS[0],
    USER_STATE_VERSION_COLUMNS[1],
    USER_STATE_VERSION_COLUMNS[2],
];
