-- The query service's live tail reads the payload index by log position.
CREATE INDEX {prefix}ingest_payloads_position ON {schema}{prefix}ingest_payloads (log_partition, log_offset, record_index);
