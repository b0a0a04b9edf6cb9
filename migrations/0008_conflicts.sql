-- Conflicting resends (same tenant and id, another payload) never lower
-- usage silently. Each one gets a resolution:
--   raised    same metric and event time, larger value: the counted event
--             became this one and the difference was added to its windows
--   kept      same metric and event time, value lower or equal: nothing to add
--   held      another metric or event time: nothing counted, waiting for an
--             operator, who marks it
--   counted   (from held) its value was counted in its own metric and windows
--   dismissed (from held) left uncounted
-- rejected_hash and rejected_event are the resent event's (whatever its
-- resolution); counted_hash and counted_value are what the ledger held
-- when it arrived.
ALTER TABLE ledger_conflicts ADD COLUMN metric text;
ALTER TABLE ledger_conflicts ADD COLUMN value bigint;
ALTER TABLE ledger_conflicts ADD COLUMN event_time timestamptz;
ALTER TABLE ledger_conflicts ADD COLUMN counted_value bigint;
-- Rows recorded before this file were left uncounted (first seen won):
-- held, for an operator to count or dismiss.
ALTER TABLE ledger_conflicts ADD COLUMN resolution text NOT NULL DEFAULT 'held'
    CHECK (resolution IN ('raised', 'kept', 'held', 'counted', 'dismissed'));
ALTER TABLE ledger_conflicts ADD COLUMN resolved_by text;
ALTER TABLE ledger_conflicts ADD COLUMN resolved_at timestamptz;
ALTER TABLE ledger_conflicts ADD COLUMN note text NOT NULL DEFAULT '';
UPDATE ledger_conflicts SET note = 'recorded under the first-seen rule';

CREATE INDEX ledger_conflicts_detected ON ledger_conflicts (tenant, detected_at);
CREATE INDEX ledger_conflicts_held ON ledger_conflicts (id) WHERE resolution = 'held';

-- A tenant whose held and raised conflicts of one UTC day went beyond the
-- alert threshold: one row per tenant and day, written by the aggregator
-- the first time (so it logs once), read by the API (alerting).
CREATE TABLE conflict_alerts (
    tenant    text        NOT NULL,
    day       date        NOT NULL,
    conflicts integer     NOT NULL,
    threshold integer     NOT NULL,
    raised_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, day)
);
