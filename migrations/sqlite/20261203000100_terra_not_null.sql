-- terra-ingest's own SQLite tables keep their columns (SQLite cannot add NOT NULL to a
-- column in place; Terra publishes no SQLite schema). As on Postgres and MySQL, events
-- without a user no longer get a terra_misc_payloads row: the rows earlier versions wrote
-- move, whole, to ingest_misc_without_user (nothing is dropped).
CREATE TABLE IF NOT EXISTS {schema}{prefix}ingest_misc_without_user (
    data_type TEXT NULL,
    payload_type TEXT NULL,
    created_at TEXT NULL,
    payload_id TEXT NULL
);
INSERT INTO {schema}{prefix}ingest_misc_without_user (data_type, payload_type, created_at, payload_id)
    SELECT data_type, payload_type, created_at, payload_id FROM {schema}{prefix}terra_misc_payloads WHERE user_id IS NULL;
DELETE FROM {schema}{prefix}terra_misc_payloads WHERE user_id IS NULL;
