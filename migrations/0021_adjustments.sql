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

-- billing_credits: a customer credit the biller gives Stripe (a customer
-- balance transaction) for a decrease of a month's metered total that it
-- can no longer take back by cancelling pushes (the latest push is older
-- than Stripe's 24 hours, or the month's invoice is final). Recorded as an
-- intent, with its deterministic idempotency key, before the call, and
-- marked with the outcome after, as billing_pushes are; quantity then no
-- longer counts as claimed (claimed = pushes not cancelled - credits).
--   metric          the meter billed, as billing_pushes.metric
--   claimed_total, metered_total  the totals the credit settles
--   quantity        claimed_total - metered_total
--   amount          the credit in the currency's minor unit, <= 0 (0: the
--                   quota has no price, or the prices are equal; status none)
--   status          intent, sent (stripe_txn_id set), dead (the call failed
--                   for good; replayed by an operator), none (nothing to send)
CREATE TABLE billing_credits (
    id                  bigserial   PRIMARY KEY,
    tenant              text        NOT NULL,
    metric              text        NOT NULL,
    group_key           text        NOT NULL DEFAULT '',
    period_start        timestamptz NOT NULL,
    stripe_customer_id  text        NOT NULL,
    claimed_total       numeric     NOT NULL,
    metered_total       numeric     NOT NULL,
    quantity            numeric     NOT NULL CHECK (quantity > 0),
    amount              bigint      NOT NULL CHECK (amount <= 0),
    currency            text        NOT NULL,
    idempotency_key     text        NOT NULL UNIQUE CHECK (length(idempotency_key) <= 255),
    status              text        NOT NULL DEFAULT 'intent' CHECK (status IN ('intent', 'sent', 'dead', 'none')),
    stripe_txn_id       text,
    attempts            integer     NOT NULL DEFAULT 0,
    last_error          text        NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_credits_pair ON billing_credits (tenant, metric, group_key, period_start);
CREATE INDEX billing_credits_open ON billing_credits (id) WHERE status IN ('intent', 'dead');
