-- terra-ingest's own tables, beside Terra's: consumed log positions (written in the same
-- transaction as the rows), the payload index, the user lifecycle history, dead letters.
CREATE TABLE {schema}{prefix}ingest_positions (
    log_partition BIGINT PRIMARY KEY,
    next_offset BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE {schema}{prefix}ingest_payloads (
    row_key VARCHAR(64) PRIMARY KEY,
    kind VARCHAR(8) NOT NULL,
    payload_id VARCHAR(300) NOT NULL,
    user_id VARCHAR(36) NULL,
    data_type TEXT NULL,
    event_type TEXT NOT NULL,
    natural_key TEXT NOT NULL,
    record_index BIGINT NOT NULL,
    start_time TEXT NULL,
    end_time TEXT NULL,
    start_utc VARCHAR(32) NULL,
    envelope_id VARCHAR(36) NOT NULL,
    log_partition BIGINT NOT NULL,
    log_offset BIGINT NOT NULL,
    version_ts_ms BIGINT NOT NULL,
    ordering_ts_ms BIGINT NULL,
    received_at_ms BIGINT NOT NULL,
    body_size BIGINT NOT NULL,
    body_sha256 VARCHAR(64) NOT NULL,
    terra_trace_id TEXT NULL,
    terra_reference TEXT NULL
);
CREATE INDEX {prefix}ingest_payloads_user_time ON {schema}{prefix}ingest_payloads (user_id, start_utc);
CREATE INDEX {prefix}ingest_payloads_payload_id ON {schema}{prefix}ingest_payloads (payload_id);
CREATE TABLE {schema}{prefix}ingest_users (
    user_id VARCHAR(36) PRIMARY KEY,
    first_seen_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    state_version_ts_ms BIGINT NULL,
    state_partition BIGINT NULL,
    state_offset BIGINT NULL
);
CREATE TABLE {schema}{prefix}ingest_user_events (
    event_id VARCHAR(64) PRIMARY KEY,
    user_id VARCHAR(36) NOT NULL,
    event_type TEXT NOT NULL,
    user_role VARCHAR(16) NOT NULL,
    status TEXT NULL,
    state VARCHAR(20) NULL,
    provider TEXT NULL,
    reference_id TEXT NULL,
    scopes TEXT NULL,
    payload_id VARCHAR(300) NOT NULL,
    envelope_id VARCHAR(36) NOT NULL,
    log_partition BIGINT NOT NULL,
    log_offset BIGINT NOT NULL,
    version_ts_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL
);
CREATE INDEX {prefix}ingest_user_events_user ON {schema}{prefix}ingest_user_events (user_id, version_ts_ms, log_partition, log_offset);
CREATE TABLE {schema}{prefix}ingest_dead_letters (
    log_partition BIGINT NOT NULL,
    log_offset BIGINT NOT NULL,
    envelope_id VARCHAR(36) NOT NULL,
    event_type TEXT NOT NULL,
    reason TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    body_sha256 VARCHAR(64) NOT NULL,
    body BLOB NOT NULL,
    dead_at_ms BIGINT NOT NULL,
    PRIMARY KEY (log_partition, log_offset)
);
