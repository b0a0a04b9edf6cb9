-- billing_period(tenant, t): the tenant's billing period [period_start,
-- period_end) containing t, from tenant_billing_cycles, for the SQL that
-- needs a period's end (the plan version that bills a period, lineage).
-- It is internal/billingcycle's Schedule.Span, statement for statement
-- (TestBillingPeriodSQLMatchesSchedule holds the two together):
--
--   * no cycle in force at t: the UTC calendar month;
--   * day and week cycles: boundaries every interval_count days (7 times
--     that for week) from the anchor;
--   * month and year cycles: the boundary k intervals from the anchor is
--     on the anchor's day of month at its time of day, or on the month's
--     last day when the month is shorter;
--   * a change starts a period at its effective_from, and the period in
--     force before it ends there.
--
-- A tenant's usage windows of granularity month start at its billing
-- periods' starts: the aggregator places usage by the same rules.
CREATE FUNCTION billing_period(p_tenant text, t timestamptz, OUT period_start timestamptz, OUT period_end timestamptz)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    c   record;
    nxt timestamptz;
    a   timestamp;
    tt  timestamp := t AT TIME ZONE 'UTC';
    per integer;
    k   integer;
    b0  timestamp;
    b1  timestamp;
BEGIN
    SELECT effective_from, anchor, interval, interval_count INTO c FROM tenant_billing_cycles
        WHERE tenant = p_tenant AND effective_from <= t ORDER BY effective_from DESC LIMIT 1;
    SELECT min(effective_from) INTO nxt FROM tenant_billing_cycles WHERE tenant = p_tenant AND effective_from > t;
    IF c.effective_from IS NULL THEN
        b0 := date_trunc('month', tt);
        b1 := b0 + interval '1 month';
    ELSIF c.interval IN ('day', 'week') THEN
        a := c.anchor AT TIME ZONE 'UTC';
        per := c.interval_count * (CASE WHEN c.interval = 'week' THEN 7 ELSE 1 END);
        k := floor(extract(epoch FROM (tt - a)) / (per * 86400.0))::integer;
        LOOP
            b0 := a + make_interval(days => k * per);
            EXIT WHEN b0 <= tt;
            k := k - 1;
        END LOOP;
        LOOP
            b1 := a + make_interval(days => (k + 1) * per);
            EXIT WHEN b1 > tt;
            k := k + 1;
            b0 := b1;
        END LOOP;
    ELSE
        a := c.anchor AT TIME ZONE 'UTC';
        per := c.interval_count * (CASE WHEN c.interval = 'year' THEN 12 ELSE 1 END);
        k := floor(((extract(year FROM tt) - extract(year FROM a)) * 12 + extract(month FROM tt) - extract(month FROM a)) / per)::integer;
        LOOP
            b0 := billing_cycle_boundary(a, k * per);
            EXIT WHEN b0 <= tt;
            k := k - 1;
        END LOOP;
        LOOP
            b1 := billing_cycle_boundary(a, (k + 1) * per);
            EXIT WHEN b1 > tt;
            k := k + 1;
            b0 := b1;
        END LOOP;
    END IF;
    period_start := b0 AT TIME ZONE 'UTC';
    period_end := b1 AT TIME ZONE 'UTC';
    IF c.effective_from IS NOT NULL AND period_start < c.effective_from THEN
        period_start := c.effective_from;
    END IF;
    IF nxt IS NOT NULL AND nxt < period_end THEN
        period_end := nxt;
    END IF;
END
$$;

-- billing_cycle_boundary(anchor_ts, n): the boundary n months from the
-- anchor anchor_ts (UTC): the anchor's day, clamped to the month's last
-- day, at the anchor's time of day.
CREATE FUNCTION billing_cycle_boundary(anchor_ts timestamp, n integer) RETURNS timestamp
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT f + make_interval(days => least(extract(day FROM anchor_ts)::integer,
            extract(day FROM f + interval '1 month' - interval '1 day')::integer) - 1)
        + (anchor_ts - date_trunc('day', anchor_ts))
    FROM (SELECT date_trunc('month', anchor_ts) + make_interval(months => n) AS f) m
$$;
