-- Usage windows are kept per meter and group: a window is keyed by
-- (tenant, meter, group_key, granularity, window_start). The windows that
-- exist become the implicit meters' windows: every metric keeps a meter of
-- the same name (sum, no groups), whose group_key is ''. No row is
-- rewritten or recounted, so nothing is lost or counted twice.
--   meter      the meter's name (the column was the metric's name, which is
--              the implicit meter's name)
--   group_key  the combination of the meter's group_by values; '' when the
--              meter has no groups
-- Renaming a column only changes the catalogue; adding a NOT NULL column
-- with a constant default is instant too (no table rewrite).
ALTER TABLE usage_windows RENAME COLUMN metric TO meter;
ALTER TABLE usage_windows ADD COLUMN group_key text NOT NULL DEFAULT '';
-- The primary key is replaced in one statement, so there is no moment
-- without it. Cost on a large table: one build of the new unique index
-- (a scan and sort of the whole table) under an ACCESS EXCLUSIVE lock, so
-- writers and readers of usage_windows wait for that one index build.
-- usage_windows has no other index or constraint than this key and the
-- granularity CHECK, which the rename leaves as it is.
ALTER TABLE usage_windows
    DROP CONSTRAINT usage_windows_pkey,
    ADD CONSTRAINT usage_windows_pkey PRIMARY KEY (tenant, meter, group_key, granularity, window_start);
