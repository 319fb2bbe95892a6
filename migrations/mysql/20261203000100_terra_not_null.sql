-- Terra's published table definitions (docs/terra-compatibility.md, table rows): user_id,
-- created_at and payload_id NOT NULL, and data_type on data payloads. Earlier versions wrote
-- events without a user (healthcheck, s3_payload, ...) into terra_misc_payloads with a NULL
-- user_id, which Terra's table cannot hold: those rows move, whole, to
-- ingest_misc_without_user (nothing is dropped); such events now have no Terra row (the
-- payload index and the objects keep them). The columns keep their types and the table's
-- binary collation. A migration cut short is finished by running it again.
CREATE TABLE IF NOT EXISTS {schema}{prefix}ingest_misc_without_user (
    data_type TEXT NULL,
    payload_type TEXT NULL,
    created_at TEXT NULL,
    payload_id TEXT NULL
) CHARACTER SET utf8mb4 COLLATE {binary_collation};
INSERT INTO {schema}{prefix}ingest_misc_without_user (data_type, payload_type, created_at, payload_id)
    SELECT data_type, payload_type, created_at, payload_id FROM {schema}{prefix}terra_misc_payloads WHERE user_id IS NULL;
DELETE FROM {schema}{prefix}terra_misc_payloads WHERE user_id IS NULL;
ALTER TABLE {schema}{prefix}terra_data_payloads MODIFY user_id VARCHAR(36) NOT NULL, MODIFY data_type TEXT NOT NULL, MODIFY created_at TEXT NOT NULL, MODIFY payload_id TEXT NOT NULL;
ALTER TABLE {schema}{prefix}terra_misc_payloads MODIFY user_id VARCHAR(36) NOT NULL, MODIFY created_at TEXT NOT NULL, MODIFY payload_id TEXT NOT NULL;
