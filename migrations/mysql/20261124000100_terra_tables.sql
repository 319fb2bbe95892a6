-- Terra's SQL destination (terra-wire-format §6), column for column.
CREATE TABLE {schema}{prefix}terra_users (
    user_id VARCHAR(36) PRIMARY KEY,
    reference_id TEXT NULL,
    created_at TEXT NOT NULL,
    granted_scopes TEXT NULL,
    provider TEXT NOT NULL,
    state VARCHAR(20)
);
CREATE TABLE {schema}{prefix}terra_data_payloads (
    user_id VARCHAR(36),
    data_type TEXT,
    created_at TEXT,
    payload_id TEXT,
    start_time TEXT NULL,
    end_time TEXT NULL
);
CREATE INDEX {prefix}terra_data_payloads_payload_id ON {schema}{prefix}terra_data_payloads (payload_id(255));
CREATE INDEX {prefix}terra_data_payloads_user ON {schema}{prefix}terra_data_payloads (user_id, data_type(64));
CREATE TABLE {schema}{prefix}terra_misc_payloads (
    user_id VARCHAR(36),
    data_type TEXT NULL,
    payload_type TEXT NULL,
    created_at TEXT,
    payload_id TEXT
);
CREATE INDEX {prefix}terra_misc_payloads_payload_id ON {schema}{prefix}terra_misc_payloads (payload_id(255));
CREATE INDEX {prefix}terra_misc_payloads_user ON {schema}{prefix}terra_misc_payloads (user_id);
-- the old docs' name for the misc table
CREATE VIEW {schema}{prefix}terra_other_payloads AS
    SELECT user_id, data_type, payload_type, created_at, payload_id FROM {schema}{prefix}terra_misc_payloads;
