-- Period completeness and the billing.events topic.
--
-- consumer_offsets.watermark
--   How far in time the group's partition is applied: every record
--   appended to the partition before the watermark has been counted (a
--   batch's transaction sets it to the greatest record timestamp of the
--   batch, never in the future; a consumer that has read the partition up
--   to its high-water mark sets it to the time of that read). Record
--   timestamps are the broker's append times on a topic with
--   message.timestamp.type=LogAppendTime, else the producers' create
--   times, which the allowed lateness of billing periods absorbs. It only
--   moves forward. NULL: not known yet (rows before this migration, or a
--   partition not yet read to its end).
ALTER TABLE consumer_offsets ADD COLUMN watermark timestamptz NULL;

-- billing_period_events: the periods announced on billing.events with
-- period.closed, one row per tenant and period, written in the transaction
-- that queues the event in the outbox, so the event goes out once.
CREATE TABLE billing_period_events (
    tenant       text        NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL CHECK (period_end > period_start),
    event_id     text        NOT NULL UNIQUE,
    closed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, period_start)
);

-- The closer looks for month windows of periods that ended: this index
-- lets it read them by start without scanning every tenant's windows.
CREATE INDEX usage_windows_month_start ON usage_windows (window_start, tenant)
    WHERE granularity = 'month';
