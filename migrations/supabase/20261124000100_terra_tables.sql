-- Terra's Supabase destination: the same three tables with proper types, payload_id as the
-- primary key and foreign keys to terra_users that cascade.
CREATE TABLE {schema}{prefix}terra_users (
    user_id VARCHAR(36) PRIMARY KEY,
    reference_id TEXT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    granted_scopes TEXT NULL,
    provider TEXT NOT NULL,
    state VARCHAR(20)
);
CREATE TABLE {schema}{prefix}terra_data_payloads (
    payload_id TEXT PRIMARY KEY,
    user_id VARCHAR(36) NOT NULL REFERENCES {schema}{prefix}terra_users (user_id) ON DELETE CASCADE,
    data_type TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    start_time TIMESTAMPTZ NULL,
    end_time TIMESTAMPTZ NULL
);
CREATE INDEX {prefix}terra_data_payloads_user ON {schema}{prefix}terra_data_payloads (user_id, data_type, start_time);
CREATE TABLE {schema}{prefix}terra_misc_payloads (
    payload_id TEXT PRIMARY KEY,
    user_id VARCHAR(36) NULL REFERENCES {schema}{prefix}terra_users (user_id) ON DELETE CASCADE,
    data_type TEXT NULL,
    payload_type TEXT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX {prefix}terra_misc_payloads_user ON {schema}{prefix}terra_misc_payloads (user_id);
CREATE VIEW {schema}{prefix}terra_other_payloads AS
    SELECT user_id, data_type, payload_type, created_at, payload_id FROM {schema}{prefix}terra_misc_payloads;
