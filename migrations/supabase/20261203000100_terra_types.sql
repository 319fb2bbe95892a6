-- Terra's Supabase tables as its Supabase page defines them (docs/terra-compatibility.md):
-- TEXT ids and state, terra_users' created_at and provider nullable without a default, the
-- payloads' data_type and created_at nullable without a default, user_id NOT NULL on both
-- payload tables, foreign keys ON DELETE CASCADE ON UPDATE CASCADE. Misc rows without a
-- user (which Terra's NOT NULL foreign key cannot hold) move, whole, to
-- ingest_misc_without_user first; nothing is dropped.
CREATE TABLE IF NOT EXISTS {schema}{prefix}ingest_misc_without_user (
    data_type TEXT NULL,
    payload_type TEXT NULL,
    created_at TEXT NULL,
    payload_id TEXT NULL
);
INSERT INTO {schema}{prefix}ingest_misc_without_user (data_type, payload_type, created_at, payload_id)
    SELECT data_type, payload_type, created_at::TEXT, payload_id FROM {schema}{prefix}terra_misc_payloads WHERE user_id IS NULL;
DELETE FROM {schema}{prefix}terra_misc_payloads WHERE user_id IS NULL;
-- the view reads the misc table's columns: made again below, as the first migration made it
DROP VIEW {schema}{prefix}terra_other_payloads;
-- the foreign keys by whatever name they have (a rebuild's swap keeps its prefixed names)
DO $$ DECLARE c record; BEGIN FOR c IN SELECT conrelid::regclass AS tbl, conname FROM pg_constraint WHERE contype = 'f' AND conrelid IN ('{schema}{prefix}terra_data_payloads'::regclass, '{schema}{prefix}terra_misc_payloads'::regclass) LOOP EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tbl, c.conname); END LOOP; END $$;
ALTER TABLE {schema}{prefix}terra_users ALTER COLUMN user_id TYPE TEXT, ALTER COLUMN created_at DROP NOT NULL, ALTER COLUMN created_at DROP DEFAULT, ALTER COLUMN provider DROP NOT NULL, ALTER COLUMN state TYPE TEXT;
ALTER TABLE {schema}{prefix}terra_data_payloads ALTER COLUMN user_id TYPE TEXT, ALTER COLUMN data_type DROP NOT NULL, ALTER COLUMN created_at DROP NOT NULL, ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE {schema}{prefix}terra_misc_payloads ALTER COLUMN user_id TYPE TEXT, ALTER COLUMN user_id SET NOT NULL, ALTER COLUMN created_at DROP NOT NULL, ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE {schema}{prefix}terra_data_payloads ADD FOREIGN KEY (user_id) REFERENCES {schema}{prefix}terra_users (user_id) ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE {schema}{prefix}terra_misc_payloads ADD FOREIGN KEY (user_id) REFERENCES {schema}{prefix}terra_users (user_id) ON DELETE CASCADE ON UPDATE CASCADE;
CREATE VIEW {schema}{prefix}terra_other_payloads AS
    SELECT user_id, data_type, payload_type, created_at, payload_id FROM {schema}{prefix}terra_misc_payloads;
