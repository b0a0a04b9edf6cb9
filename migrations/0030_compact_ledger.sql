-- A compact dedup ledger: about 140 bytes per counted event (heap and
-- primary key) instead of about 290, with the same guarantees.
--
-- ledger
--   One row per (tenant, id) counted within the horizon, as before, with
--   the names moved out and the fields ordered for alignment:
--   payload_hash  the first 8 bytes of the SHA-256 of the event's canonical
--                 JSON, as a big-endian bigint: a resend with another
--                 payload goes undetected (counted as a duplicate) with
--                 probability 2^-64.
--   id, id_text   a canonical lower-case UUID id is stored as its 16 bytes
--                 (id_text ''); any other id as the first 16 bytes of its
--                 SHA-256, with the id itself in id_text. Two ids are the
--                 same only when both id and id_text are: dedup stays exact.
--                 Two different ids of one tenant with one key (a digest
--                 collision, probability about n^2 / 2^129 for n ids) are
--                 never merged: the second is kept in ledger_overflow.
--   tenant_ref, metric_ref  the names' refs in ledger_names.
--   event_day     gone: it is the UTC day of event_time.
--   recorded_at   kept: when the event was counted, which the exports
--                 show and which says whether a raise counts in a meter
--                 defined or changed since.
--   The primary key is (id, tenant_ref): UUIDv7 ids are time-ordered, so
--   the index mostly appends. Retention deletes by event_time through a
--   BRIN index (rows arrive roughly in event-time order).
-- ledger_names
--   The tenant and metric names the ledger refers to, written by
--   usagedata only; a name, once given a ref, keeps it.
-- ledger_overflow
--   The rare event whose (tenant, key) is taken by another id: the old,
--   wide row, keyed by the full (tenant, event_id).
-- ledger_events
--   The old read shape (tenant, event_id, payload_hash, metric, value,
--   event_time, event_day, src_partition, src_offset, recorded_at,
--   counted_xid) over ledger and ledger_overflow, for readers.
--
-- The rows of the old ledger are copied (ids, refs and hash prefixes
-- computed by the functions below, which the product computes alike);
-- windows, conflicts and everything else are untouched: a conflict refers
-- to its event by (tenant, event_id), as before.

-- ledger_key is the 16-byte key of an event id.
CREATE FUNCTION ledger_key(event_id text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN event_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN event_id::uuid
        ELSE encode(substr(sha256(convert_to(event_id, 'UTF8')), 1, 16), 'hex')::uuid END
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
    ref  integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE ledger (
    payload_hash  bigint      NOT NULL,
    value         bigint      NOT NULL,
    event_time    timestamptz NOT NULL,
    src_offset    bigint      NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    counted_xid   xid8                 DEFAULT pg_current_xact_id(),
    id            uuid        NOT NULL,
    tenant_ref    integer     NOT NULL,
    metric_ref    integer     NOT NULL,
    src_partition smallint    NOT NULL,
    id_text       text        NOT NULL DEFAULT '',
    PRIMARY KEY (id, tenant_ref)
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

INSERT INTO ledger_names (name)
SELECT n FROM (SELECT tenant FROM ledger_v1 UNION SELECT metric FROM ledger_v1) AS s(n) ORDER BY n;

INSERT INTO ledger (payload_hash, value, event_time, src_offset, recorded_at, counted_xid, id, tenant_ref, metric_ref, src_partition, id_text)
SELECT ledger_hash(o.payload_hash), o.value, o.event_time, o.src_offset, o.recorded_at, o.counted_xid,
    ledger_key(o.event_id), t.ref, m.ref, o.src_partition, ledger_id_text(o.event_id)
FROM ledger_v1 o
JOIN ledger_names t ON t.name = o.tenant
JOIN ledger_names m ON m.name = o.metric
ORDER BY o.event_time, o.tenant, o.event_id
ON CONFLICT (id, tenant_ref) DO NOTHING;

INSERT INTO ledger_overflow (tenant, event_id, payload_hash, metric, value, event_time, src_partition, src_offset, recorded_at, counted_xid)
SELECT o.tenant, o.event_id, ledger_hash(o.payload_hash), o.metric, o.value, o.event_time, o.src_partition, o.src_offset, o.recorded_at, o.counted_xid
FROM ledger_v1 o
WHERE NOT EXISTS (SELECT 1 FROM ledger l JOIN ledger_names t ON t.ref = l.tenant_ref
    WHERE l.id = ledger_key(o.event_id) AND t.name = o.tenant AND l.id_text = ledger_id_text(o.event_id));

DROP TABLE ledger_v1;

CREATE VIEW ledger_events AS
SELECT t.name AS tenant, ledger_event_id(l.id, l.id_text) AS event_id, l.payload_hash, m.name AS metric, l.value, l.event_time,
    (l.event_time AT TIME ZONE 'UTC')::date AS event_day, l.src_partition::integer AS src_partition, l.src_offset, l.recorded_at, l.counted_xid
FROM ledger l
JOIN ledger_names t ON t.ref = l.tenant_ref
JOIN ledger_names m ON m.ref = l.metric_ref
UNION ALL
SELECT tenant, event_id, payload_hash, metric, value, event_time,
    (event_time AT TIME ZONE 'UTC')::date, src_partition, src_offset, recorded_at, counted_xid
FROM ledger_overflow;

ANALYZE ledger;
ANALYZE ledger_names;
