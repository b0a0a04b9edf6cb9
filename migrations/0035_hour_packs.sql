-- Hour windows of grouped meters, packed by day for reads.
--
-- A month of hourly windows of a meter kept in 100 groups is 74,400
-- rows of usage_windows, spread over the pages that every other tenant's
-- windows of the same hours share: a grouped usage read paid one heap
-- fetch per row. A packed day holds, for one tenant, meter and UTC day,
-- one row per group with the day's 24 hour values and event counts, so
-- that the same read fetches 3,100 rows.
--
-- usage_windows stays the source of truth and every writer keeps writing
-- it alone: a pack is a copy, made by the aggregator's packer for days at
-- least three days old, and used by a read only while it is current:
--
--   usage_hour_packs   the copies: one row per (tenant, meter, day, group
--                      key), the group's windows of the day encoded in
--                      windows (usagedata's hour pack format: a version
--                      byte, then per window in order of start its
--                      offset in seconds from day, value and events as
--                      varints). Values past int64 are never packed:
--                      such a day stays unpacked.
--   usage_packed_days  which (tenant, meter, day) have packs, all of the
--                      day's groups at once.
--   usage_pack_stale   (tenant, meter, day) whose hour windows changed
--                      since the day was packed: a read ignores the
--                      day's packs and reads its windows, until the
--                      packer packs it again.
--   usage_pack_progress the next day the packer packs (one row).
--
-- The triggers mark a day stale in the transaction that changes one of
-- its grouped hour windows, when the window starts before the start of
-- yesterday (UTC, 24 hours before the writing transaction's now()'s
-- midnight): they never fire for the current days' windows, so the
-- aggregator's usual writes cost nothing more. The packer packs (and
-- repacks) only days three or more days old (before the day before
-- yesterday), so a write to a packed day that does not mark it would need
-- a transaction open for more than a day, which the packer checks for.
-- Writers must not turn triggers off (session_replication_role =
-- replica).
CREATE TABLE usage_hour_packs (
    tenant      text        NOT NULL,
    meter       text        NOT NULL,
    day         timestamptz NOT NULL,
    group_key   text        NOT NULL,
    windows     bytea       NOT NULL,
    PRIMARY KEY (tenant, meter, day, group_key)
);
COMMENT ON TABLE usage_hour_packs IS 'Copies of grouped meters'' hour windows, one row per tenant, meter, UTC day and group, encoded by internal/storage/usagedata (hourpacks.go). Read only for days in usage_packed_days and not in usage_pack_stale.';

CREATE TABLE usage_packed_days (
    tenant    text        NOT NULL,
    meter     text        NOT NULL,
    day       timestamptz NOT NULL,
    groups    integer     NOT NULL,
    packed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, meter, day)
);
COMMENT ON TABLE usage_packed_days IS 'The (tenant, meter, UTC day) whose grouped hour windows usage_hour_packs holds, all groups of the day.';

CREATE TABLE usage_pack_stale (
    tenant    text        NOT NULL,
    meter     text        NOT NULL,
    day       timestamptz NOT NULL,
    xid       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, meter, day)
);
COMMENT ON TABLE usage_pack_stale IS 'Days whose grouped hour windows changed after they were packed: reads use their windows, not their packs.';

CREATE TABLE usage_pack_progress (
    one      boolean     PRIMARY KEY DEFAULT true CHECK (one),
    next_day timestamptz NOT NULL
);
COMMENT ON TABLE usage_pack_progress IS 'The next UTC day whose grouped hour windows the packer packs.';

-- Marks the changed window's day stale (on an UPDATE, the old row's day
-- too, should a key ever change). A transaction that marks a day already
-- marked by an earlier one updates the marker (and so locks it: the
-- packer's removal of the marker waits for the writer's commit); a second
-- window of the same day in the same transaction only locks it. The table
-- is named with its schema: a connection that puts a rebuild's shadow
-- schema first on its search_path still marks the live table.
CREATE FUNCTION usage_pack_stale_mark() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    w public.usage_windows;
BEGIN
    FOREACH w IN ARRAY CASE TG_OP WHEN 'INSERT' THEN ARRAY[NEW] WHEN 'DELETE' THEN ARRAY[OLD] ELSE ARRAY[NEW, OLD] END LOOP
        INSERT INTO public.usage_pack_stale (tenant, meter, day)
        VALUES (w.tenant, w.meter, date_trunc('day', w.window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
        ON CONFLICT (tenant, meter, day) DO UPDATE SET xid = pg_current_xact_id(), marked_at = now()
            WHERE usage_pack_stale.xid <> pg_current_xact_id();
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER usage_pack_stale_insert AFTER INSERT ON usage_windows FOR EACH ROW
    WHEN (NEW.granularity = 'hour' AND NEW.group_key <> ''
        AND NEW.window_start < (date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') - interval '24 hours')
    EXECUTE FUNCTION usage_pack_stale_mark();
CREATE TRIGGER usage_pack_stale_update AFTER UPDATE ON usage_windows FOR EACH ROW
    WHEN (NEW.granularity = 'hour' AND NEW.group_key <> ''
        AND NEW.window_start < (date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') - interval '24 hours'
        OR OLD.granularity = 'hour' AND OLD.group_key <> ''
        AND OLD.window_start < (date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') - interval '24 hours')
    EXECUTE FUNCTION usage_pack_stale_mark();
CREATE TRIGGER usage_pack_stale_delete AFTER DELETE ON usage_windows FOR EACH ROW
    WHEN (OLD.granularity = 'hour' AND OLD.group_key <> ''
        AND OLD.window_start < (date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') - interval '24 hours')
    EXECUTE FUNCTION usage_pack_stale_mark();

-- TRUNCATE fires no row trigger: it forgets every pack.
CREATE FUNCTION usage_packs_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM public.usage_packed_days;
    DELETE FROM public.usage_hour_packs;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_packs_truncated AFTER TRUNCATE ON usage_windows FOR EACH STATEMENT
    EXECUTE FUNCTION usage_packs_truncated();
