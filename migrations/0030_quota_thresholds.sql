-- Thresholds a plan chooses for each quota, and a grace before a hard
-- quota blocks.
--
-- plan_quotas.thresholds
--   The warning percentages (1-99, strictly increasing) whose crossing is
--   recorded once per period as a warning breach; {80}, the one warning
--   there was before, by default, so existing plans behave as they did.
-- plan_quotas.grace_ms, plan_quotas.grace_amount
--   A hard quota's grace: milliseconds from the period's first exceeded
--   crossing, and units past the limit, during which usage beyond the
--   blocking point is exceeded, not blocked. NULL is no grace of that kind.
-- quota_breaches.percent
--   A warning breach's threshold (0 for exceeded and blocked); part of the
--   key a crossing is recorded once under.
ALTER TABLE plan_quotas
    ADD COLUMN thresholds   integer[] NOT NULL DEFAULT '{80}',
    ADD COLUMN grace_ms     bigint CHECK (grace_ms > 0),
    ADD COLUMN grace_amount bigint CHECK (grace_amount >= 0);

ALTER TABLE quota_breaches ADD COLUMN percent integer NOT NULL DEFAULT 0;
UPDATE quota_breaches SET percent = 80 WHERE threshold = 'warning';
ALTER TABLE quota_breaches
    DROP CONSTRAINT quota_breaches_group_key,
    ADD CONSTRAINT quota_breaches_group_key UNIQUE (tenant, meter, group_key, period_start, threshold, percent);
