-- The text keys of the webhook tables compare byte by byte (COLLATE "C") instead of by the
-- database's collation: they are ids, names and states, never sorted for people, and every
-- delivery is in three indexes on them. In psql on Postgres 15 (a C.UTF-8 database, where
-- each comparison goes through strcoll), 614,400 delivered rows in statements of 1,024 took
-- 0.76 s per 102,400 against 0.88 s (-13 %). Equality is the same under both. Every column
-- compared with another (deliveries' and events' envelope_id, deliveries' and endpoints'
-- endpoint names) changes together, so none is compared across collations. Postgres only:
-- the indexes on these columns are rebuilt (the table is not rewritten); MySQL's and SQLite's
-- keys already compare as their columns are declared.
ALTER TABLE {schema}{prefix}webhook_deliveries
    ALTER COLUMN endpoint TYPE VARCHAR(200) COLLATE "C",
    ALTER COLUMN envelope_id TYPE VARCHAR(36) COLLATE "C",
    ALTER COLUMN user_id TYPE VARCHAR(200) COLLATE "C",
    ALTER COLUMN ordering_key TYPE VARCHAR(200) COLLATE "C",
    ALTER COLUMN state TYPE VARCHAR(16) COLLATE "C";
ALTER TABLE {schema}{prefix}webhook_events
    ALTER COLUMN envelope_id TYPE VARCHAR(36) COLLATE "C";
ALTER TABLE {schema}{prefix}webhook_endpoints
    ALTER COLUMN name TYPE VARCHAR(200) COLLATE "C";
