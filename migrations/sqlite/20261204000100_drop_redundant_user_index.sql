-- ingest_payloads_user_order (user_id, start_utc, row_key) serves every query the older
-- ingest_payloads_user_time (user_id, start_utc) served, as its prefix: one index fewer to
-- update per payload row (issue 16). Nothing else is touched.
DROP INDEX IF EXISTS {schema}{prefix}ingest_payloads_user_time;
