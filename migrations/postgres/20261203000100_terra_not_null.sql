-- Terra's published table definitions (docs/terra-compatibility.md, table rows): user_id,
-- created_at and payload_id NOT NULL, and data_type on data payloads. Earlier versions wrote
-- events without a user (healthcheck, s3_payload, ...) into terra_misc_payloads with a NULL
-- user_id, which Terra's table cannot hold: those rows move, whole, to
-- ingest_misc_without_user (nothing is dropped); such events now have no Terra row (the
-- payload index and the objects keep them). Every statement can run again.
CREATE TABLE IF NOT EXISTS {schema}{prefix}ingest_misc_without_user (
    data_type TEXT NULL,
    payload_type TEXT NULL,
    created_at TEXT NULL,
    payload_id TEXT NULL
);
INSERT INTO {schema}{prefix}ingest_misc_without_user (data_type, payload_type, created_at, payload_id)
    SELECT data_type, payload_type, created_at, payload_id FROM {schema}{prefix}terra_misc_payloads WHERE user_id IS NULL;
DELETE FROM {schema}{prefix}terra_misc_payloads WHERE user_id IS NULL;
ALTER TABLE {schema}{prefix}terra_data_payloads ALTER COLUMN user_id SET NOT NULL, ALTER COLUMN data_type SET NOT NULL, ALTER COLUMN created_at SET NOT NULL, ALTER COLUMN payload_id SET NOT NULL;
ALTER TABLE {schema}{prefix}terra_misc_payloads ALTER COLUMN user_id SET NOT NULL, ALTER COLUMN created_at SET NOT NULL, ALTER COLUMN payload_id SET NOT NULL;
