-- Idempotent HTTP receive: the SHA-256 of the body received first under a source id (an
-- `Idempotency-Key`), so a repeat of the key with another body is refused (HTTP 422)
-- instead of dropped as a duplicate. NULL for sources that carry no digest (FILE, AMQP,
-- MQTT, and rows written before this migration): a repeat of those is a duplicate.
ALTER TABLE received_sources ADD COLUMN body_sha256 bytea;
