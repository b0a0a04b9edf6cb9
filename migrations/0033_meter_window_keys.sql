-- Window keys ordered by period before group.
--
-- usage_windows' primary key becomes (tenant, meter, granularity,
-- window_start, group_key): a meter's windows of one granularity over a
-- range of starts, every group of them, are one range of the key, read by
-- one index scan in start order (a grouped usage read, a quota over a
-- defined meter's groups), where the key led by group_key needed a probe
-- and a range per group. The key still identifies one window, so every
-- reader of one group's window (quotas, Stripe pushes, reconciliation,
-- lineage) still finds it by one lookup. usage_windows_meter_period
-- (0015: tenant, meter, granularity, window_start of defined meters' day
-- and month windows) is a prefix of the new key and is dropped: every
-- new day or month window of a defined meter writes one index entry less.
--
-- meter_uniques' primary key is reordered the same way, (tenant, meter,
-- granularity, window_start, group_key, value), so that the unique values
-- of a meter's windows in a range are one range too.
--
-- Cost on a populated database: each key is rebuilt in one statement
-- (a scan and sort of the table) under an ACCESS EXCLUSIVE lock, so there
-- is no moment without a key; writers and readers of the table wait for
-- the build. No row is rewritten.
ALTER TABLE usage_windows
    DROP CONSTRAINT usage_windows_pkey,
    ADD CONSTRAINT usage_windows_pkey PRIMARY KEY (tenant, meter, granularity, window_start, group_key);
DROP INDEX usage_windows_meter_period;
ALTER TABLE meter_uniques
    DROP CONSTRAINT meter_uniques_pkey,
    ADD CONSTRAINT meter_uniques_pkey PRIMARY KEY (tenant, meter, granularity, window_start, group_key, value);
