-- A compact dedup ledger: about 150 bytes per counted event (heap, primary
-- key and BRIN index) instead of about 290, with the same guarantees.
--
-- ledger
--   One row per (tenant, id) counted within the horizon, as before, with
--   the names moved out and the fields ordered for alignment:
--   payload_hash  the first 8 bytes of the SHA-256 of the event's canonical
--                 JSON, as a big-endian bigint: a resend with another
--                 payload goes undetected (counted as a duplicate) with
--                 probability 2^-64.
--   id, id_text   the key: a canonical lower-case UUID id is stored as its
--                 16 bytes (id_text ''); any other id as the first 16
--                 bytes of the SHA-256 of its tenant, a zero byte and the
--                 id, with the id itself in id_text. The key is the primary
--                 key. Two (tenant, id) are the same event only when key,
--                 id_text and tenant all are: dedup stays exact. An event
--                 whose key another event holds (the same UUID in another
--                 tenant, or a digest collision, probability about
--                 n^2 / 2^129 for n ids) is never merged with it: it is
--                 kept in ledger_overflow.
--   ref           the event's (tenant, metric) in ledger_names.
--   event_day     gone: it is the UTC day of event_time.
--   recorded_at   kept: when the event was counted, which the exports
--                 show and which says whether a raise counts in a meter
--                 defined or changed since.
--   src_partition a smallint: partitions 0 to 32767.
--   UUIDv7 ids are time-ordered, so the primary key mostly appends.
--   Retention deletes by event_time through a BRIN index (rows arrive
--   roughly in event-time order). Readers by tenant and time (exports,
--   lineage) scan the time range's pages: no index leads with the tenant.
-- ledger_names
--   The (tenant, metric) pairs the ledger refers to, written by usagedata
--   only; a pair, once given a ref, keeps it (one row per tenant and
--   metric, never per event).
-- ledger_overflow
--   The rare event whose key another event holds: the old, wide row,
--   keyed by the full (tenant, event_id).
-- ledger_events
--   The old read shape (tenant, event_id, payload_hash, metric, value,
--   event_time, event_day, src_partition, src_offset, recorded_at,
--   counted_xid) over ledger and ledger_overflow, for readers.
--
-- The rows of the old ledger are copied (ids, refs and hash prefixes
-- computed by the functions below, which the product computes alike);
-- windows, conflicts and everything else are untouched: a conflict refers
-- to its event by (tenant, event_id), as before.

-- ledger_key is the 16-byte key of a tenant's event id.
CREATE FUNCTION ledger_key(tenant text, event_id text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN event_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN event_id::uuid
        ELSE encode(substr(sha256(convert_to(tenant, 'UTF8') || '\x00'::bytea || convert_to(event_id, 'UTF8')), 1, 16), 'hex')::uuid END
$$;

-- ledger_id_text is what id_text holds for an event id: '' for a
-- canonical lower-case UUID, else the id.
CREATE FUNCTION ledger_id_text(event_id text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN event_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN '' ELSE event_id END
$$;

-- ledger_event_id gives an event id back from its key and id_text.
CREATE FUNCTION ledger_event_id(id uuid, id_text text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN id_text = '' THEN id::text ELSE id_text END
$$;

-- ledger_hash is the stored payload hash of a SHA-256: its first 8 bytes
-- as a big-endian bigint (shorter input is padded with zero bytes).
CREATE FUNCTION ledger_hash(hash bytea) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ('x' || encode(substr(hash || '\x0000000000000000'::bytea, 1, 8), 'hex'))::bit(64)::bigint
$$;

ALTER TABLE ledger RENAME TO ledger_v1;
ALTER INDEX ledger_pkey RENAME TO ledger_v1_pkey;
ALTER INDEX ledger_event_day RENAME TO ledger_v1_event_day;

CREATE TABLE ledger_names (
    ref    integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant text NOT NULL,
    metric text NOT NULL,
    UNIQUE (tenant, metric)
);

CREATE TABLE ledger (
    payload_hash  bigint      NOT NULL,
    value         bigint      NOT NULL,
    event_time    timestamptz NOT NULL,
    src_offset    bigint      NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    counted_xid   xid8                 DEFAULT pg_current_xact_id(),
    id            uuid        PRIMARY KEY,
    ref           integer     NOT NULL,
    src_partition smallint    NOT NULL,
    id_text       text        NOT NULL DEFAULT ''
);
CREATE INDEX ledger_event_time ON ledger USING brin (event_time);

CREATE TABLE ledger_overflow (
    tenant        text        NOT NULL,
    event_id      text        NOT NULL,
    payload_hash  bigint      NOT NULL,
    metric        text        NOT NULL,
    value         bigint      NOT NULL,
    event_time    timestamptz NOT NULL,
    src_partition integer     NOT NULL,
    src_offset    bigint      NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    counted_xid   xid8                 DEFAULT pg_current_xact_id(),
    PRIMARY KEY (tenant, event_id)
);
CREATE INDEX ledger_overflow_event_time ON ledger_overflow (event_time);

INSERT INTO ledger_names (tenant, metric)
SELECT DISTINCT tenant, metric FROM ledger_v1 ORDER BY tenant, metric;

INSERT INTO ledger (payload_hash, value, event_time, src_offset, recorded_at, counted_xid, id, ref, src_partition, id_text)
SELECT ledger_hash(o.payload_hash), o.value, o.event_time, o.src_offset, o.recorded_at, o.counted_xid,
    ledger_key(o.tenant, o.event_id), n.ref, o.src_partition, ledger_id_text(o.event_id)
FROM ledger_v1 o
JOIN ledger_names n ON n.tenant = o.tenant AND n.metric = o.metric
ORDER BY o.event_time, o.tenant, o.event_id
ON CONFLICT (id) DO NOTHING;

INSERT INTO ledger_overflow (tenant, event_id, payload_hash, metric, value, event_time, src_partition, src_offset, recorded_at, counted_xid)
SELECT o.tenant, o.event_id, ledger_hash(o.payload_hash), o.metric, o.value, o.event_time, o.src_partition, o.src_offset, o.recorded_at, o.counted_xid
FROM ledger_v1 o
WHERE NOT EXISTS (SELECT 1 FROM ledger l JOIN ledger_names n ON n.ref = l.ref
    WHERE l.id = ledger_key(o.tenant, o.event_id) AND l.id_text = ledger_id_text(o.event_id) AND n.tenant = o.tenant);

DROP TABLE ledger_v1;

CREATE VIEW ledger_events AS
SELECT n.tenant, ledger_event_id(l.id, l.id_text) AS event_id, l.payload_hash, n.metric, l.value, l.event_time,
    (l.event_time AT TIME ZONE 'UTC')::date AS event_day, l.src_partition::integer AS src_partition, l.src_offset, l.recorded_at, l.counted_xid
FROM ledger l
JOIN ledger_names n ON n.ref = l.ref
UNION ALL
SELECT tenant, event_id, payload_hash, metric, value, event_time,
    (event_time AT TIME ZONE 'UTC')::date, src_partition, src_offset, recorded_at, counted_xid
FROM ledger_overflow;

ANALYZE ledger;
ANALYZE ledger_names;
