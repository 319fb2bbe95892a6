-- ordering_key: the key a per_user endpoint orders by (user_id's value), set only on the
-- deliveries of per_user endpoints, so that only their pending rows are in the index of the
-- per_user check (webhook_deliveries_user). The other endpoints (unordered, the default)
-- never read it, and their pending rows (an endpoint failing or down) no longer pay for it:
-- in terra-bench webhooks with one endpoint down, the healthy one's deliveries/s went from
-- 0.88-0.95 of its rate with both healthy to 0.97-0.99 without that index. Pending rows
-- written before are keyed here; an endpoint made per_user later has its pending rows keyed
-- when the dispatcher starts, and re-queued dead letters are keyed as they are re-queued.
ALTER TABLE {schema}{prefix}webhook_deliveries ADD COLUMN ordering_key VARCHAR(200) NULL;
UPDATE {schema}{prefix}webhook_deliveries SET ordering_key = user_id WHERE state = 'pending';
DROP INDEX {schema}{prefix}webhook_deliveries_user;
CREATE INDEX {prefix}webhook_deliveries_user ON {schema}{prefix}webhook_deliveries (endpoint, ordering_key, id) WHERE state = 'pending' AND ordering_key IS NOT NULL;
