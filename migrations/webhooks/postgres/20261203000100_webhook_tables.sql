-- The webhook destination's own tables (`terra-ingest project webhooks`), in the database
-- the projector is given; recorded in webhook_migrations, apart from the SQL projection's
-- tables (a rebuild of those never touches these).
-- webhook_positions: the consumed log positions of group "webhooks", written in the same
-- transaction as the deliveries they created (each event fans out exactly once).
CREATE TABLE {schema}{prefix}webhook_positions (
    log_partition BIGINT PRIMARY KEY,
    next_offset BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
-- One row per event to deliver: the exact body Terra sent and the headers forwarded with it.
CREATE TABLE {schema}{prefix}webhook_events (
    envelope_id VARCHAR(36) PRIMARY KEY,
    log_partition BIGINT NOT NULL,
    log_offset BIGINT NOT NULL,
    source VARCHAR(200) NOT NULL,
    event_type TEXT NOT NULL,
    user_id TEXT NULL,
    received_at_ms BIGINT NOT NULL,
    terra_reference TEXT NULL,
    terra_trace_id TEXT NULL,
    ordering_timestamp_ms BIGINT NULL,
    traceparent TEXT NULL,
    body BYTEA NOT NULL
);
-- Each endpoint's state: enabled, disabled (failing too long, 410 Gone: probed and
-- re-enabled by a 2xx) or paused (by an operator: not probed).
CREATE TABLE {schema}{prefix}webhook_endpoints (
    name VARCHAR(200) PRIMARY KEY,
    state VARCHAR(16) NOT NULL,
    reason TEXT NULL,
    changed_at_ms BIGINT NOT NULL,
    failing_since_ms BIGINT NULL,
    last_success_ms BIGINT NULL,
    next_probe_at_ms BIGINT NULL
);
-- One row per (event, endpoint): pending until delivered or dead. user_id: the ordering key
-- (the user id, or sha256:<hex> of one longer than 200 bytes). A worker owns a pending
-- row while lease_until_ms is ahead (lease_token fences a worker whose lease ran out).
CREATE TABLE {schema}{prefix}webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    endpoint VARCHAR(200) NOT NULL,
    envelope_id VARCHAR(36) NOT NULL,
    user_id VARCHAR(200) NULL,
    event_type TEXT NOT NULL,
    state VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    lease_until_ms BIGINT NULL,
    lease_token VARCHAR(36) NULL,
    created_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT NULL,
    last_status INTEGER NULL,
    last_error TEXT NULL
);
CREATE UNIQUE INDEX {prefix}webhook_deliveries_pair ON {schema}{prefix}webhook_deliveries (envelope_id, endpoint);
CREATE INDEX {prefix}webhook_deliveries_due ON {schema}{prefix}webhook_deliveries (endpoint, state, next_attempt_at_ms);
CREATE INDEX {prefix}webhook_deliveries_user ON {schema}{prefix}webhook_deliveries (endpoint, user_id, state, id);
CREATE INDEX {prefix}webhook_deliveries_finished ON {schema}{prefix}webhook_deliveries (endpoint, state, finished_at_ms);
-- Every attempt: when, how long, the status or the class of error, at most 1 KiB of the
-- response. probe: sent to a disabled endpoint to see whether it is back (it does not
-- count towards the delivery's schedule).
CREATE TABLE {schema}{prefix}webhook_attempts (
    id BIGSERIAL PRIMARY KEY,
    delivery_id BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    probe INTEGER NOT NULL,
    started_at_ms BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status_code INTEGER NULL,
    error_class VARCHAR(32) NOT NULL,
    error TEXT NULL,
    response TEXT NULL
);
CREATE INDEX {prefix}webhook_attempts_delivery ON {schema}{prefix}webhook_attempts (delivery_id, id);
