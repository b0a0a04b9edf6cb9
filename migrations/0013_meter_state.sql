-- The state that exact windows of every aggregation need beyond value and
-- events.
--   latest_time, latest_id  for a latest meter, the (time, id) of the event
--              whose value the window holds: a later event replaces it.
--              NULL for every other meter. Adding nullable columns without a
--              default is instant (no table rewrite).
ALTER TABLE usage_windows ADD COLUMN latest_time timestamptz NULL;
ALTER TABLE usage_windows ADD COLUMN latest_id text NULL;

-- The distinct values a unique_count meter's window has seen, so that the
-- count stays exact across batches: a value counts in its window's value
-- only when its row here is inserted, once.
CREATE TABLE meter_uniques (
    tenant       text        NOT NULL,
    meter        text        NOT NULL,
    group_key    text        NOT NULL,
    granularity  text        NOT NULL CHECK (granularity IN ('minute', 'hour', 'day', 'month')),
    window_start timestamptz NOT NULL,
    value        text        NOT NULL,
    PRIMARY KEY (tenant, meter, group_key, granularity, window_start, value)
);
COMMENT ON TABLE meter_uniques IS 'Distinct property values per unique_count meter window; a window''s value counts these rows.';
