-- ingest_payloads_user_order (user_id, start_utc, row_key) serves every query the older
-- ingest_payloads_user_time (user_id, start_utc) served, as its prefix (and, leading with
-- user_id, the foreign key's lookups): one index fewer to update per payload row (issue 16).
DROP INDEX {prefix}ingest_payloads_user_time ON {schema}{prefix}ingest_payloads;
