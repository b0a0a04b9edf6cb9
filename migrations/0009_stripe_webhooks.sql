-- Stripe does not deliver webhooks in order. Each event we order names an
-- object (a subscription): the last event applied to it is kept here, and
-- an event created before it is acknowledged as stale and changes nothing.
-- Events are ordered by (event_created, event_id): created has one-second
-- resolution, and the id (compared byte by byte) breaks ties the same way
-- whatever the delivery order.
CREATE TABLE stripe_object_versions (
    object_id     text                NOT NULL PRIMARY KEY,
    object_type   text                NOT NULL,
    event_created timestamptz         NOT NULL,
    event_id      text COLLATE "C"    NOT NULL,
    updated_at    timestamptz         NOT NULL DEFAULT now()
);

-- What became of each event. Rows written before this file have NULLs.
--   processed    it took effect
--   ignored      a type we do not act on
--   stale        older than the last event applied to its object
--   undecodable  signed, but its content cannot take effect: see below
ALTER TABLE stripe_webhook_events ADD COLUMN created timestamptz;
ALTER TABLE stripe_webhook_events ADD COLUMN object_id text;
ALTER TABLE stripe_webhook_events ADD COLUMN outcome text
    CHECK (outcome IN ('processed', 'ignored', 'stale', 'undecodable'));

-- Signed events that could not take effect because of their content (not
-- JSON, an unknown shape, no metadata.plan, a plan or customer we do not
-- know...): acknowledged to Stripe so it stops retrying, and kept here for
-- on-call with the reason and the exact bytes Stripe signed
-- (convert_from(payload, 'UTF8') shows them). event_id is Stripe's id, or
-- sha256:<hex> of the payload when it has none.
CREATE TABLE stripe_webhook_undecodable (
    id          bigserial   PRIMARY KEY,
    event_id    text        NOT NULL,
    type        text        NOT NULL,
    created     timestamptz,
    reason      text        NOT NULL,
    payload     bytea       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_webhook_undecodable_event ON stripe_webhook_undecodable (event_id);
CREATE INDEX stripe_webhook_undecodable_received ON stripe_webhook_undecodable (received_at);
