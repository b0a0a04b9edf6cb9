-- Usage adjustments (refunds and corrections) and the customer credits the
-- biller gives Stripe for decreases it can no longer cancel.
--
-- usage_adjustments: each adjustment the aggregator applied, once per
-- (tenant, adjustment_id), written in the batch transaction that changed
-- the meter's month window of period_start by amount (hour and day
-- windows are not adjusted).
--   meter        the adjusted meter (a sum or count meter, or a metric's
--                implicit meter)
--   group_key    the group's key as meter.Group.Key writes it ('' for none)
--   amount       the signed change of the month window, never 0
--   reason, reference  free text from finance
--   src_partition, src_offset  the usage.events record that carried it
CREATE TABLE usage_adjustments (
    tenant        text        NOT NULL,
    adjustment_id text        NOT NULL,
    meter         text        NOT NULL,
    group_key     text        NOT NULL,
    period_start  timestamptz NOT NULL,
    amount        bigint      NOT NULL CHECK (amount <> 0),
    reason        text        NOT NULL,
    reference     text        NOT NULL,
    src_partition integer     NOT NULL,
    src_offset    bigint      NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, adjustment_id)
);
CREATE INDEX usage_adjustments_period ON usage_adjustments (tenant, period_start);
