-- The outbox relay sets aside ("parks") a message Kafka refuses for good
-- (too large, invalid topic...) or that failed max attempts, so it never
-- blocks the messages behind it. A parked row keeps published_at NULL and
-- stays until on-call retries it (parked_at back to NULL) or deletes it.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN last_error text;
-- A failed row, and the later rows of its topic and key, wait until then.
ALTER TABLE outbox ADD COLUMN retry_at timestamptz;
ALTER TABLE outbox ADD COLUMN parked_at timestamptz;

DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (id) WHERE published_at IS NULL AND parked_at IS NOT NULL;
-- The failed rows, which hold back the later rows of their topic and key.
CREATE INDEX outbox_waiting ON outbox (topic, msg_key, id)
    WHERE published_at IS NULL AND parked_at IS NULL AND retry_at IS NOT NULL;
