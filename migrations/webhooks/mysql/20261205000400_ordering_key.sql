-- ordering_key: the key a per_user endpoint orders by (user_id's value), set only on the
-- deliveries of per_user endpoints; the per_user check reads it (see the Postgres and SQLite
-- migration of the same name, where a partial index then leaves every other row out). MySQL
-- has no partial indexes: webhook_deliveries_user moves to it, and listing by user gets an
-- index of its own (webhook_deliveries_by_user), which webhook_deliveries_user gave before.
ALTER TABLE {schema}{prefix}webhook_deliveries ADD COLUMN ordering_key VARCHAR(200) NULL;
UPDATE {schema}{prefix}webhook_deliveries SET ordering_key = user_id WHERE state = 'pending';
DROP INDEX {prefix}webhook_deliveries_user ON {schema}{prefix}webhook_deliveries;
CREATE INDEX {prefix}webhook_deliveries_user ON {schema}{prefix}webhook_deliveries (endpoint, ordering_key, state, id);
CREATE INDEX {prefix}webhook_deliveries_by_user ON {schema}{prefix}webhook_deliveries (user_id);
