-- Usage anomalies: spikes and drops of a tenant's hourly usage of a meter
-- against its seasonal baseline (internal/anomaly), found by the
-- aggregator's leader loop "anomalies" and written by
-- internal/storage/anomalydata only.
--
-- usage_anomalies: one row per episode (consecutive anomalous hours of one
-- direction), written in the transaction that queues its usage.anomalies
-- message, so the message goes out once per episode.
--   id           UUIDv5 of (tenant, meter, direction, hour): stable, so a
--                judgement repeated by a new leader finds the row
--   hour         the start of the episode's first anomalous hour
--   last_hour    the start of its latest anomalous hour so far
--   ended_at     the end of its last anomalous hour, once an hour after it
--                was judged normal (or of the other direction); NULL while
--                the episode is open
--   observed, expected, score, sensitivity  the first hour's judgement:
--                its total, the baseline's median, the robust score
--                (2 places) and the sensitivity it was judged against
CREATE TABLE usage_anomalies (
    id          uuid        PRIMARY KEY,
    tenant      text        NOT NULL,
    meter       text        NOT NULL,
    direction   text        NOT NULL CHECK (direction IN ('spike', 'drop')),
    hour        timestamptz NOT NULL,
    last_hour   timestamptz NOT NULL CHECK (last_hour >= hour),
    ended_at    timestamptz NULL CHECK (ended_at > last_hour),
    observed    numeric     NOT NULL,
    expected    numeric     NOT NULL,
    score       numeric     NOT NULL,
    sensitivity numeric     NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, meter, direction, hour)
);
-- GET /v1/anomalies lists a tenant's episodes newest first; the loop reads
-- the open ones at every hour it judges.
CREATE INDEX usage_anomalies_tenant_hour ON usage_anomalies (tenant, hour DESC);
CREATE INDEX usage_anomalies_hour ON usage_anomalies (hour DESC);
CREATE INDEX usage_anomalies_open ON usage_anomalies (tenant, meter) WHERE ended_at IS NULL;

-- anomaly_progress: the last hour judged (one row), moved by a
-- compare-and-set in the transaction that records that hour's episodes, so
-- each hour is judged once even when two leaders overlap.
CREATE TABLE anomaly_progress (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    judged_through timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The loop reads the hour windows of a few given starts across every
-- tenant: this index lets it find them without scanning every tenant's
-- windows. Cost on a large table: one build under a SHARE lock (writers
-- of usage_windows wait for it); afterwards only hour windows enter it.
CREATE INDEX usage_windows_hour_start ON usage_windows (window_start)
    WHERE granularity = 'hour';
