-- Meters: what usage is kept of a metric, and grouped by which event
-- properties. A metric with no row here still has its implicit meter of
-- the same name (the sum of its values, no groups), which is not stored.
--   aggregation   sum (of values), count (of events), max (of values),
--                 latest (the value of the event with the greatest time,
--                 ties by id), unique_count (distinct values of the
--                 string property named by property, exact)
--   group_by      up to 5 property names, in order; usage is kept per
--                 combination of their values
--   filter        a JSON object of property = string value pairs an event
--                 must all match to count in this meter
--   property      the property unique_count counts; set exactly then
--   version       1 when made, +1 on each change; a put that changes
--                 nothing leaves it (and updated_at) as it was
-- Rows are never deleted, so sum(version) rises with every change: a
-- loader compares it to tell whether to read the definitions again.
CREATE TABLE meters (
    name        text        PRIMARY KEY
                            CHECK (name ~ '^[A-Za-z0-9._:-]{1,128}$' AND name NOT IN ('.', '..')),
    metric      text        NOT NULL CHECK (metric ~ '^[A-Za-z0-9._:-]{1,128}$'),
    aggregation text        NOT NULL
                            CHECK (aggregation IN ('sum', 'count', 'max', 'latest', 'unique_count')),
    group_by    text[]      NOT NULL DEFAULT '{}'
                            CHECK (cardinality(group_by) <= 5
                                   AND (cardinality(group_by) = 0 OR array_ndims(group_by) = 1)
                                   AND array_position(group_by, NULL) IS NULL
                                   AND '' <> ALL (group_by)),
    filter      jsonb       NOT NULL DEFAULT '{}'
                            CHECK (jsonb_typeof(filter) = 'object'
                                   AND NOT jsonb_path_exists(filter, '$.* ? (@.type() != "string")')),
    property    text        CHECK (property <> ''),
    description text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 1024),
    version     bigint      NOT NULL CHECK (version >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT meters_property_iff_unique_count
        CHECK ((aggregation = 'unique_count') = (property IS NOT NULL))
);

-- Every row written notifies the channel "meters" with the meter's name,
-- delivered when (and only if) the writing transaction commits: an
-- aggregator listening there reloads the definitions without a restart.
-- A put that changes nothing writes no row, so notifies nothing.
CREATE FUNCTION meters_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meters', NEW.name);
    RETURN NULL;
END
$$;
CREATE TRIGGER meters_notify AFTER INSERT OR UPDATE ON meters
    FOR EACH ROW EXECUTE FUNCTION meters_notify();
