-- Plans, tenants and API keys: who may send and read usage, and what each
-- tenant's quotas are.

CREATE TABLE plans (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._:-]{1,128}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per metric a plan limits or bills. A metric without a row is
-- metered but neither limited nor billed.
CREATE TABLE plan_quotas (
    plan              text    NOT NULL REFERENCES plans (name) ON DELETE CASCADE,
    metric            text    NOT NULL CHECK (metric ~ '^[A-Za-z0-9._:-]{1,128}$'),
    quota_limit       bigint  CHECK (quota_limit >= 0),          -- NULL: unlimited
    period            text    NOT NULL CHECK (period IN ('day', 'month')),
    burst_percent     integer NOT NULL DEFAULT 0 CHECK (burst_percent BETWEEN 0 AND 1000),
    hard              boolean NOT NULL DEFAULT false,
    stripe_event_name text    NOT NULL CHECK (stripe_event_name <> ''),
    PRIMARY KEY (plan, metric)
);

CREATE TABLE tenants (
    tenant             text PRIMARY KEY CHECK (tenant ~ '^[A-Za-z0-9._:-]{1,128}$'),
    plan               text REFERENCES plans (name),
    stripe_customer_id text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored as SHA-256 hashes of the secret; the secret is shown
-- once, when the key is made. A tenant key is bound to one tenant.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    key_hash    bytea NOT NULL UNIQUE,
    role        text  NOT NULL CHECK (role IN ('tenant', 'admin', 'viewer')),
    tenant      text  CHECK (tenant ~ '^[A-Za-z0-9._:-]{1,128}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((role = 'tenant') = (tenant IS NOT NULL))
);
