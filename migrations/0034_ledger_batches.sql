-- The ledger row loses recorded_at: 8 bytes less per counted event (a
-- heap tuple of 88 bytes instead of 96).
--
-- recorded_at is when an event was counted: now() of the transaction that
-- counted it, the same for every row that transaction counted, as
-- counted_xid is its xid. It moves to one row per transaction:
--
-- ledger_batches
--   One row per transaction that counted ledger rows: its xid
--   (counted_xid) and its now() (recorded_at). Written by the trigger
--   ledger_batch_row after every statement that inserts into ledger,
--   whoever runs it (a process of an older release still running during
--   an upgrade writes ledger rows without knowing of this table), so every
--   ledger row of a transaction has its batch row. Indexed by recorded_at
--   for retention.
-- ledger_recorded
--   The recorded_at of a ledger row whose time no batch row gives: rows
--   counted before lineage (0024; counted_xid NULL), and rows of an xid
--   whose rows were recorded at different times. Only this migration
--   writes it; a row leaves with its ledger row (retention).
-- ledger
--   As in 0027 without recorded_at, rebuilt as a new table (a dropped
--   column would stay in every tuple's null bitmap).
-- ledger_events
--   The same columns as before, recorded_at being the ledger_recorded
--   row's, else the batch's (coalesce(side, batch)); ledger_overflow keeps
--   its own recorded_at.
--
-- Every row's recorded_at reads back as it was (TestUpgradeTo0034).

CREATE TABLE ledger_batches (
    counted_xid xid8        PRIMARY KEY,
    recorded_at timestamptz NOT NULL
);

CREATE TABLE ledger_recorded (
    id          uuid        PRIMARY KEY,
    recorded_at timestamptz NOT NULL
);

DROP VIEW ledger_events;
ALTER TABLE ledger RENAME TO ledger_v2;
ALTER INDEX ledger_pkey RENAME TO ledger_v2_pkey;
ALTER INDEX ledger_event_time RENAME TO ledger_v2_event_time;

CREATE TABLE ledger (
    payload_hash  bigint      NOT NULL,
    value         bigint      NOT NULL,
    event_time    timestamptz NOT NULL,
    src_offset    bigint      NOT NULL,
    counted_xid   xid8                 DEFAULT pg_current_xact_id(),
    id            uuid        PRIMARY KEY,
    ref           integer     NOT NULL,
    src_partition smallint    NOT NULL,
    id_text       text        NOT NULL DEFAULT ''
);

-- A batch row for every xid whose rows share one recorded_at.
INSERT INTO ledger_batches (counted_xid, recorded_at)
SELECT counted_xid, min(recorded_at) FROM ledger_v2
WHERE counted_xid IS NOT NULL
GROUP BY counted_xid
HAVING min(recorded_at) = max(recorded_at);

-- A side row for every row whose batch row does not give its time.
INSERT INTO ledger_recorded (id, recorded_at)
SELECT o.id, o.recorded_at FROM ledger_v2 o
WHERE NOT EXISTS (SELECT 1 FROM ledger_batches b WHERE b.counted_xid = o.counted_xid AND b.recorded_at = o.recorded_at)
ORDER BY o.id;

INSERT INTO ledger (payload_hash, value, event_time, src_offset, counted_xid, id, ref, src_partition, id_text)
SELECT payload_hash, value, event_time, src_offset, counted_xid, id, ref, src_partition, id_text
FROM ledger_v2
ORDER BY event_time, id;

DROP TABLE ledger_v2;
CREATE INDEX ledger_event_time ON ledger USING brin (event_time);
CREATE INDEX ledger_batches_recorded_at ON ledger_batches (recorded_at);

-- After each statement that inserts into ledger, the transaction's batch
-- row (a statement that inserted nothing new writes one too: harmless,
-- retention deletes it).
CREATE FUNCTION ledger_batch_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_batches (counted_xid, recorded_at) VALUES (pg_current_xact_id(), now())
    ON CONFLICT (counted_xid) DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_batch_row AFTER INSERT ON ledger FOR EACH STATEMENT EXECUTE FUNCTION ledger_batch_row();

CREATE VIEW ledger_events AS
SELECT n.tenant, ledger_event_id(l.id, l.id_text) AS event_id, l.payload_hash, n.metric, l.value, l.event_time,
    (l.event_time AT TIME ZONE 'UTC')::date AS event_day, l.src_partition::integer AS src_partition, l.src_offset,
    coalesce(s.recorded_at, b.recorded_at) AS recorded_at, l.counted_xid
FROM ledger l
JOIN ledger_names n ON n.ref = l.ref
LEFT JOIN ledger_recorded s ON s.id = l.id
LEFT JOIN ledger_batches b ON b.counted_xid = l.counted_xid
UNION ALL
SELECT tenant, event_id, payload_hash, metric, value, event_time,
    (event_time AT TIME ZONE 'UTC')::date, src_partition, src_offset, recorded_at, counted_xid
FROM ledger_overflow;

ANALYZE ledger;
ANALYZE ledger_batches;
ANALYZE ledger_recorded;
