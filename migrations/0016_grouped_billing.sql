-- Billing of defined meters, per group.
--
-- plan_quotas.stripe_event_name
--   NULL: the quota limits usage and is not billed. Only a quota on a
--   defined meter may be NULL; every quota on a defined meter made before
--   this migration was refused a Stripe event name (it held the metric's
--   name and was never billed), so it becomes NULL. An implicit quota keeps
--   its name. On a defined meter the name may hold {property} placeholders,
--   one for each group_by property of the meter: the group's Stripe event
--   name is the name with each placeholder replaced by the group's value.
ALTER TABLE plan_quotas
    ALTER COLUMN stripe_event_name DROP NOT NULL,
    ADD CONSTRAINT plan_quotas_implicit_billed CHECK (meter IS NOT NULL OR stripe_event_name IS NOT NULL);
UPDATE plan_quotas SET stripe_event_name = NULL WHERE meter IS NOT NULL;

-- billing_pushes
--   metric     the meter the push bills: the metric itself for its implicit
--              meter (every row before this migration), else the defined
--              meter's name (as usage_windows.meter).
--   group_key  the group billed, as usage_windows stores it (a canonical
--              JSON array, or a 'sha256:' digest resolved through
--              meter_group_keys); '' for a meter without groups, and for
--              every row before this migration. Identifiers of pushes with
--              an empty group key are derived as before.
-- The claimed total is kept per (tenant, metric, group_key, period_start).
ALTER TABLE billing_pushes ADD COLUMN group_key text NOT NULL DEFAULT '';
DROP INDEX billing_pushes_period;
CREATE INDEX billing_pushes_period ON billing_pushes (tenant, metric, period_start, group_key);
