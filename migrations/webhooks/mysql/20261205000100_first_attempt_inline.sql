-- A delivery whose first attempt the fan-out sent and saw answered 2xx before it wrote the
-- delivery (the common case) keeps that attempt in its own row instead of a row of
-- webhook_attempts: when it started, how long it took and at most 1 KiB of the response (its
-- status is last_status, its error class 'none'). NULL for every other delivery, whose
-- attempts are all in webhook_attempts. Such a delivery is written delivered, its only attempt
-- made: nothing changes it afterwards.
ALTER TABLE {schema}{prefix}webhook_deliveries ADD COLUMN first_started_at_ms BIGINT NULL, ADD COLUMN first_duration_ms BIGINT NULL, ADD COLUMN first_response TEXT NULL;
