-- The biller's state: every push of usage to Stripe (intent before the
-- call, outcome after), closed billing periods, and processed webhooks.

-- One row per meter event the biller decided to send. The identifier (and
-- the Idempotency-Key) derive from (tenant, metric, period, cumulative
-- total), so a retry, a restart or a DLQ replay sends the same one.
CREATE TABLE billing_pushes (
    id                  bigserial PRIMARY KEY,
    tenant              text        NOT NULL,
    metric              text        NOT NULL,
    period_start        timestamptz NOT NULL,   -- the metered month
    billed_period_start timestamptz NOT NULL,   -- the month the event's timestamp falls in
    stripe_customer_id  text        NOT NULL,
    event_name          text        NOT NULL,
    cumulative_total    numeric     NOT NULL,
    delta               numeric     NOT NULL CHECK (delta > 0),
    identifier          text        NOT NULL UNIQUE CHECK (length(identifier) <= 100),
    event_timestamp     timestamptz NOT NULL,
    status              text        NOT NULL DEFAULT 'intent' CHECK (status IN ('intent', 'sent', 'dead', 'discarded', 'cancelled')),
    carried             boolean     NOT NULL DEFAULT false,
    attempts            integer     NOT NULL DEFAULT 0,
    last_error          text        NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_pushes_period ON billing_pushes (tenant, metric, period_start);
CREATE INDEX billing_pushes_open ON billing_pushes (id) WHERE status IN ('intent', 'dead');

-- Months whose invoice is final: later usage is carried into the next one.
CREATE TABLE billing_periods (
    tenant       text        NOT NULL,
    period_start timestamptz NOT NULL,
    invoice_id   text        NOT NULL,
    finalized_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, period_start)
);

-- Stripe webhook events already handled (Stripe delivers at least once).
CREATE TABLE stripe_webhook_events (
    event_id    text PRIMARY KEY,
    type        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Meter error reports Stripe sent, for people to look at.
CREATE TABLE stripe_meter_errors (
    id          bigserial PRIMARY KEY,
    event_id    text        NOT NULL UNIQUE,
    meter       text        NOT NULL,
    summary     text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
