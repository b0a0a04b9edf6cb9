-- tenant_billing_cycles: each tenant's billing cycle over time, the
-- anchor and interval of its Stripe subscription (billing_cycle_anchor and
-- the price's recurring interval), recorded by the Stripe webhooks or by
-- PUT /v1/admin/tenants/{tenant}/billing-cycle.
--
-- A row is in force from effective_from until the next row's: a change
-- starts a billing period at effective_from, and the period in force
-- before it ends there. Before a tenant's first row, and for a tenant
-- without any, its billing periods are the UTC calendar months. Rows are
-- only added at or after the tenant's latest effective_from (one at the
-- same instant replaces it): the past periods of a tenant never move.
CREATE TABLE tenant_billing_cycles (
    tenant         text        NOT NULL REFERENCES tenants (tenant) ON DELETE CASCADE,
    effective_from timestamptz NOT NULL,
    anchor         timestamptz NOT NULL,
    interval       text        NOT NULL CHECK (interval IN ('day', 'week', 'month', 'year')),
    interval_count integer     NOT NULL CHECK (interval_count BETWEEN 1 AND 365),
    source         text        NOT NULL CHECK (source IN ('admin', 'stripe')),
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, effective_from)
);
