-- The aggregator's state: the dedup ledger, usage windows, consumer
-- offsets, quota breaches, the outbox, dead letters and corrections. One
-- aggregator transaction writes all of them for a batch.

-- Dedup ledger: one row per (tenant, id) ever counted within the horizon.
-- One global key, not day partitions: a duplicate may carry another event
-- time, and Postgres can only enforce uniqueness across partitions when the
-- partition key is part of it. Retention deletes rows by event_day.
CREATE TABLE ledger (
    tenant       text        NOT NULL,
    event_id     text        NOT NULL,
    payload_hash bytea       NOT NULL,
    metric       text        NOT NULL,
    value        bigint      NOT NULL,
    event_time   timestamptz NOT NULL,
    event_day    date        NOT NULL,
    src_partition integer    NOT NULL,
    src_offset   bigint      NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, event_id)
);
CREATE INDEX ledger_event_day ON ledger (event_day);

-- A duplicate id whose payload differs from the counted one: counted once
-- (first seen wins), recorded here for people to look at.
CREATE TABLE ledger_conflicts (
    id             bigserial PRIMARY KEY,
    tenant         text        NOT NULL,
    event_id       text        NOT NULL,
    counted_hash   bytea       NOT NULL,
    rejected_hash  bytea       NOT NULL,
    rejected_event bytea       NOT NULL,
    src_partition  integer     NOT NULL,
    src_offset     bigint      NOT NULL,
    detected_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (src_partition, src_offset)
);
CREATE INDEX ledger_conflicts_tenant ON ledger_conflicts (tenant, event_id);

-- Usage per tenant, metric and UTC window of event time.
CREATE TABLE usage_windows (
    tenant       text        NOT NULL,
    metric       text        NOT NULL,
    granularity  text        NOT NULL CHECK (granularity IN ('minute', 'hour', 'day', 'month')),
    window_start timestamptz NOT NULL,
    value        numeric     NOT NULL,
    events       bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, metric, granularity, window_start)
);

-- Where each partition resumes: the source of truth, not Kafka's commits.
CREATE TABLE consumer_offsets (
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint  NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Usage that arrived for a period already closed (or reported to Stripe):
-- counted in its window and recorded here for the biller to reconcile.
CREATE TABLE usage_corrections (
    id            bigserial PRIMARY KEY,
    tenant        text        NOT NULL,
    metric        text        NOT NULL,
    period_start  timestamptz NOT NULL,
    value         numeric     NOT NULL,
    events        bigint      NOT NULL,
    reason        text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    reconciled_at timestamptz
);
CREATE INDEX usage_corrections_open ON usage_corrections (tenant, metric, period_start) WHERE reconciled_at IS NULL;

-- One row per (tenant, metric, period, threshold): a breach is detected once.
CREATE TABLE quota_breaches (
    breach_id    text PRIMARY KEY,
    tenant       text        NOT NULL,
    metric       text        NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    threshold    text        NOT NULL CHECK (threshold IN ('warning', 'exceeded', 'blocked')),
    quota_limit  bigint      NOT NULL,
    value        numeric     NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, metric, period_start, threshold)
);

-- Messages to publish to Kafka, written in the transaction that decided
-- them; a relay publishes them at least once and marks them.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    topic        text        NOT NULL,
    msg_key      bytea,
    msg_value    bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

-- Records of usage.events the aggregator could not count, with the reason.
-- The same rows go to usage.events.dlq through the outbox.
CREATE TABLE usage_dlq (
    id               bigserial PRIMARY KEY,
    tenant           text        NOT NULL,
    error            text        NOT NULL,
    error_class      text        NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    payload          bytea       NOT NULL,
    failed_at        timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'replayed', 'discarded')),
    resolved_at      timestamptz,
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX usage_dlq_pending ON usage_dlq (id) WHERE status = 'pending';

-- Who did what to dead letters, and when.
CREATE TABLE dlq_audit (
    id         bigserial PRIMARY KEY,
    queue      text        NOT NULL,
    action     text        NOT NULL,
    actor      text        NOT NULL,
    record_ids bigint[]    NOT NULL,
    note       text        NOT NULL DEFAULT '',
    at         timestamptz NOT NULL DEFAULT now()
);
