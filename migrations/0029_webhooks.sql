-- Webhook notifications: tenants' endpoints, the deliveries queued for
-- them, and how far the notification reader has read its topics.
--
-- webhook_endpoints
--   One subscription of a tenant: an URL, the event kinds it wants, its
--   spend thresholds (exact decimals in the tenant's currency), and its
--   signing secret. A rotation keeps the previous secret until
--   previous_secret_expires_at (both sign meanwhile). state is active,
--   disabled (by an admin) or failing (only failures since failing_since
--   for longer than the biller's WEBHOOK_FAILING_AFTER: its deliveries
--   park until it is active again).
-- webhook_deliveries
--   One event for one endpoint, its body as sent (fixed at enqueue, so a
--   retry or a redelivery sends the same bytes and event id). Unique per
--   (endpoint, event id): a source message read twice queues nothing new.
--   status pending (next_attempt_at says when; a claim moves it past the
--   send's timeout as a lease), delivered or dead (retries spent).
-- notification_offsets
--   The next offset to read of each partition the notification reader
--   reads, committed with the deliveries that partition's records queued.
CREATE TABLE webhook_endpoints (
    endpoint_id                uuid PRIMARY KEY,
    tenant                     text NOT NULL REFERENCES tenants (tenant),
    url                        text NOT NULL,
    description                text NOT NULL DEFAULT '',
    kinds                      text[] NOT NULL,
    spend_thresholds           numeric[] NOT NULL DEFAULT '{}',
    secret                     text NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    state                      text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled', 'failing')),
    failing_since              timestamptz,
    last_success_at            timestamptz,
    created_at                 timestamptz NOT NULL,
    updated_at                 timestamptz NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant);

CREATE TABLE webhook_deliveries (
    delivery_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (endpoint_id) ON DELETE CASCADE,
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    tenant          text NOT NULL,
    body            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    retry_until     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, delivery_id) WHERE status = 'pending';

CREATE TABLE notification_offsets (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
