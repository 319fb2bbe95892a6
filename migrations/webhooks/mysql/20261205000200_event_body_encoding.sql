-- How a kept body (webhook_events.body) is stored: NULL as the bytes Terra sent, 'lz4' as
-- an LZ4 block of them with their length first (4 bytes, little-endian). A body is kept only
-- while a delivery of it is still to send (an endpoint failing or down), and Terra's JSON
-- bodies shrink about threefold: writing a third of the bytes made a down endpoint cost the
-- healthy ones much less (terra-bench webhooks --down-only). The bytes sent are always the
-- bytes Terra sent; rows written before this migration are read as they are.
ALTER TABLE {schema}{prefix}webhook_events ADD COLUMN body_encoding VARCHAR(16) NULL;
