-- Billing facts on billing.events: grant expiries announced once, the
-- overage price of a plan quota, and the default plan in the billing joins.

-- credit_grant_expiries: the expired grants the biller has settled, one
-- row per grant, written in the transaction that queues grant.expired in
-- the outbox, so the event goes out once.
--   remaining  the unused remainder at expiry, in units of the meter;
--              0: the grant was used up, nothing was announced.
--   event_id   the grant.expired event's id; NULL when remaining is 0.
CREATE TABLE credit_grant_expiries (
    grant_id     uuid        PRIMARY KEY REFERENCES credit_grants (grant_id),
    tenant       text        NOT NULL,
    expired_at   timestamptz NOT NULL,
    remaining    numeric     NOT NULL CHECK (remaining >= 0),
    event_id     text        NULL UNIQUE CHECK ((event_id IS NULL) = (remaining = 0)),
    settled_at   timestamptz NOT NULL DEFAULT now()
);

-- plan_quotas.overage_price: the price of the usage beyond the quota's
-- allowance (a price object, as plan_quotas.price), NULL when the quota
-- has none. Part of a version's content: a version's quotas never change.
ALTER TABLE plan_quotas ADD COLUMN overage_price jsonb NULL;

-- The plan that bills a tenant at an instant: the plan of its assignment
-- in force then (NULL for an explicit "no plan"), or, when no assignment
-- covers the instant, p_default (NULL when empty: none configured).
CREATE FUNCTION tenant_billed_plan_at(p_tenant text, p_at timestamptz, p_default text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN count(*) > 0 THEN max(plan) ELSE nullif(p_default, '') END FROM tenant_plans
    WHERE tenant = p_tenant AND valid_from <= p_at AND (valid_to IS NULL OR valid_to > p_at)
$$;
