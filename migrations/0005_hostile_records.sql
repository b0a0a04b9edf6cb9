-- Records of usage.events that hold any bytes at all must still be dead
-- lettered exactly: the raw key and headers are kept next to the raw
-- value, and a record with a null value (a tombstone) has a NULL payload.
-- The tenant column holds a readable, sanitised name only.
ALTER TABLE usage_dlq ADD COLUMN msg_key bytea;
ALTER TABLE usage_dlq ADD COLUMN header_keys bytea[] NOT NULL DEFAULT '{}';
ALTER TABLE usage_dlq ADD COLUMN header_values bytea[] NOT NULL DEFAULT '{}';
ALTER TABLE usage_dlq ALTER COLUMN payload DROP NOT NULL;
-- Rows written before this file were keyed by their tenant.
UPDATE usage_dlq SET msg_key = convert_to(tenant, 'UTF8');

-- Records deleted from a partition (by retention) before the aggregator
-- counted them: [first_lost, log_start) were never read. One row per gap.
CREATE TABLE consumer_lost_records (
    id             bigserial PRIMARY KEY,
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    first_lost     bigint      NOT NULL,
    log_start      bigint      NOT NULL CHECK (log_start > first_lost),
    detected_at    timestamptz NOT NULL DEFAULT now()
);
