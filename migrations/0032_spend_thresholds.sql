-- Spend thresholds of plans, evaluated on the projected bill in the
-- aggregator's batch transaction.
--
-- plan_versions.spend_thresholds
--   Exact decimal amounts in the version's currency ("100.00"), each > 0,
--   strictly increasing, at most 10; empty (the default) for none. Part of
--   the version's content, as its quotas are.
ALTER TABLE plan_versions ADD COLUMN spend_thresholds text[] NOT NULL DEFAULT '{}';

-- Each spend threshold a tenant's projected bill (or its bill so far)
-- reached in a billing period, recorded once: the key compares the
-- threshold as a number, so "100" and "100.00" are one threshold.
-- breach_id is the id of the spend.threshold event published for it.
CREATE TABLE spend_breaches (
    breach_id       text        NOT NULL UNIQUE,
    tenant          text        NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    threshold       numeric     NOT NULL CHECK (threshold > 0),
    projected_total numeric     NOT NULL,
    total           numeric     NOT NULL,
    currency        text        NOT NULL,
    plan            text        NOT NULL,
    plan_version    integer     NOT NULL,
    detected_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant, period_start, threshold)
);
