-- Quotas on meters and on their groups.
--
-- plan_quotas
--   meter        the meter the quota limits; NULL is the implicit meter
--                named by metric (every row before this migration), so a
--                named meter is never the metric itself. A named meter is a
--                defined meter of metric.
--   group_filter group_by property = value pairs (an object of strings):
--                the quota limits the meter's usage over the groups that
--                carry these values; {} is every group.
--   per_group    the same limit for each group of the meter, on its own.
--                Not together with a filter (one quota is either one limit
--                over some groups, or one limit per group).
-- One plan may hold several quotas on one metric: one per (meter, filter,
-- per_group). Billing reads only the implicit meter's row of a metric
-- (meter IS NULL), as before. A NULL meter is keyed as the empty string.
ALTER TABLE plan_quotas
    ADD COLUMN meter text NULL CHECK (meter ~ '^[A-Za-z0-9._:-]{1,128}$' AND meter <> metric),
    ADD COLUMN group_filter jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(group_filter) = 'object'),
    ADD COLUMN per_group boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT plan_quotas_implicit_whole CHECK (meter IS NOT NULL OR (group_filter = '{}' AND NOT per_group)),
    ADD CONSTRAINT plan_quotas_filter_or_per_group CHECK (NOT (per_group AND group_filter <> '{}')),
    DROP CONSTRAINT plan_quotas_pkey;
CREATE UNIQUE INDEX plan_quotas_key ON plan_quotas (plan, metric, coalesce(meter, ''), group_filter, per_group);

-- quota_breaches
--   meter        the meter whose usage crossed the threshold; the metric for
--                the implicit meter (every row before this migration).
--   group_key    '' for a quota on a whole meter (every row before this
--                migration); a per_group quota's group key (the meter's
--                JSON array); a filter quota's filter as a JSON object with
--                sorted keys. A key longer than 256 bytes is stored as
--                'sha256:' and the hex SHA-256 of the key, as in
--                meter_group_keys.
--   group_values the group as an object of values (null for a missing
--                property): {} for a whole meter.
-- A breach is recorded once per (tenant, meter, group_key, period_start,
-- threshold). A row inserted without a meter (by an aggregator of the
-- release before, during an upgrade) takes its metric.
ALTER TABLE quota_breaches ADD COLUMN meter text NULL;
UPDATE quota_breaches SET meter = metric;
ALTER TABLE quota_breaches
    ALTER COLUMN meter SET NOT NULL,
    ADD COLUMN group_key text NOT NULL DEFAULT '',
    ADD COLUMN group_values jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(group_values) = 'object'),
    DROP CONSTRAINT quota_breaches_tenant_metric_period_start_threshold_key,
    ADD CONSTRAINT quota_breaches_group_key UNIQUE (tenant, meter, group_key, period_start, threshold);

CREATE FUNCTION quota_breaches_meter() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.meter := coalesce(NEW.meter, NEW.metric);
    RETURN NEW;
END $$;
CREATE TRIGGER quota_breaches_meter BEFORE INSERT ON quota_breaches
    FOR EACH ROW EXECUTE FUNCTION quota_breaches_meter();

-- A quota on a defined meter reads the day or month windows of all its
-- groups of one tenant: an index of defined meters' day and month windows
-- by period, so that it reads those windows only (the primary key leads
-- with the group key). Partial: implicit meters' windows (group key '')
-- and hour and minute windows are not in it. Building it reads
-- usage_windows once, with writes to it waiting.
CREATE INDEX usage_windows_meter_period ON usage_windows (tenant, meter, granularity, window_start)
    WHERE group_key <> '' AND granularity IN ('day', 'month');
