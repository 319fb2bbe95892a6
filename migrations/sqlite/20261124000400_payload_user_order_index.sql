-- ListPayloads pages a user's payloads by (start_utc, row_key): an index in that order reads
-- one page of rows instead of all of the user's.
CREATE INDEX {prefix}ingest_payloads_user_order ON {schema}{prefix}ingest_payloads (user_id, start_utc, row_key);
