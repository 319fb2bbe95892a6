-- ordering_key: the key a per_user endpoint orders by (user_id's value), set only on the
-- deliveries of per_user endpoints (see the Postgres and SQLite migration of the same name,
-- where the per_user check reads it through a partial index that leaves every other row out).
-- MySQL has no partial indexes: its per_user check keeps reading user_id through
-- webhook_deliveries_user (endpoint, user_id, state, id), which also serves the listings by
-- endpoint and user, so no index changes here; the column is kept as on the other databases.
ALTER TABLE {schema}{prefix}webhook_deliveries ADD COLUMN ordering_key VARCHAR(200) NULL;
UPDATE {schema}{prefix}webhook_deliveries SET ordering_key = user_id WHERE state = 'pending';
