-- Versioned plans and effective-dated plan assignments.
--
-- plan_versions
--   One row per version of a plan: its quotas (plan_quotas rows of that
--   version), currency and proration policy, in force from
--   effective_from until the next version's effective_from. A version,
--   once written, never changes: a change to a plan is a new version.
--   Every plan defined before this migration becomes version 1, in force
--   from -infinity, so that every period already counted keeps the quotas
--   it was evaluated with.
--   proration  how a change to this version in the middle of a quota
--              period applies to that period: 'prorate' (each version's
--              limit weighted by the share of the period it is in force),
--              'immediate' (this version's limits for the whole period),
--              'next_period' (from the next period on).
CREATE TABLE plan_versions (
    plan           text        NOT NULL REFERENCES plans (name) ON DELETE CASCADE,
    version        integer     NOT NULL CHECK (version >= 1),
    effective_from timestamptz NOT NULL,
    proration      text        NOT NULL DEFAULT 'immediate' CHECK (proration IN ('prorate', 'immediate', 'next_period')),
    currency       text        NOT NULL DEFAULT 'usd' CHECK (currency ~ '^[a-z]{3}$'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan, version),
    UNIQUE (plan, effective_from)
);
INSERT INTO plan_versions (plan, version, effective_from, currency, created_at)
    SELECT name, 1, '-infinity', currency, created_at FROM plans;

-- plan_quotas.version: the version the quota belongs to (1 for every row
-- before this migration). A quota key is unique per version.
ALTER TABLE plan_quotas ADD COLUMN version integer;
UPDATE plan_quotas SET version = 1;
ALTER TABLE plan_quotas
    ALTER COLUMN version SET NOT NULL,
    ADD CONSTRAINT plan_quotas_version FOREIGN KEY (plan, version) REFERENCES plan_versions (plan, version) ON DELETE CASCADE;
DROP INDEX plan_quotas_key;
CREATE UNIQUE INDEX plan_quotas_key ON plan_quotas (plan, version, metric, coalesce(meter, ''), group_filter, per_group);

-- A quota inserted without a version (by the release before, during an
-- upgrade) joins its plan's latest version, version 1 from -infinity
-- when the plan has none yet.
CREATE FUNCTION plan_quotas_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version IS NULL THEN
        SELECT max(version) INTO NEW.version FROM plan_versions WHERE plan = NEW.plan;
        IF NEW.version IS NULL THEN
            INSERT INTO plan_versions (plan, version, effective_from, currency)
                SELECT name, 1, '-infinity', currency FROM plans WHERE name = NEW.plan
                ON CONFLICT DO NOTHING;
            NEW.version := 1;
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER plan_quotas_version BEFORE INSERT ON plan_quotas
    FOR EACH ROW EXECUTE FUNCTION plan_quotas_version();

-- A version's quotas are immutable: no UPDATE, and no DELETE but the
-- cascade of deleting the version or its plan.
CREATE FUNCTION plan_quotas_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND (NOT EXISTS (SELECT 1 FROM plan_versions WHERE plan = OLD.plan AND version = OLD.version)
            OR NOT EXISTS (SELECT 1 FROM plans WHERE name = OLD.plan)) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the quotas of plan % version % are immutable: make a new version', OLD.plan, OLD.version
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER plan_quotas_immutable BEFORE UPDATE OR DELETE ON plan_quotas
    FOR EACH ROW EXECUTE FUNCTION plan_quotas_immutable();

-- tenant_plans
--   A tenant's plan history: the plan assigned over [valid_from, valid_to)
--   (valid_to NULL: open). plan NULL is an explicit "no plan": unlimited,
--   and the default plan does not apply. A time covered by no row has no
--   assignment: the configured default plan applies. At most one row per
--   tenant is open, and rows of a tenant never overlap (the code closes
--   the open row at the start of the next). tenants.plan stays the plan
--   in force now, maintained with every assignment.
--   source  who made the assignment: 'admin' (the admin API), 'stripe' (a
--           subscription webhook), 'default', 'migration' (the tenant's
--           plan before this migration, from -infinity).
CREATE TABLE tenant_plans (
    tenant     text        NOT NULL REFERENCES tenants (tenant) ON DELETE CASCADE,
    plan       text        NULL REFERENCES plans (name),
    valid_from timestamptz NOT NULL,
    valid_to   timestamptz NULL,
    source     text        NOT NULL CHECK (source IN ('admin', 'stripe', 'default', 'migration')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, valid_from),
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE UNIQUE INDEX tenant_plans_open ON tenant_plans (tenant) WHERE valid_to IS NULL;
INSERT INTO tenant_plans (tenant, plan, valid_from, source)
    SELECT tenant, plan, '-infinity', 'migration' FROM tenants WHERE plan IS NOT NULL;

-- A tenant inserted with a plan and no history (by the release before,
-- during an upgrade) has had that plan since always.
CREATE FUNCTION tenants_first_plan() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.plan IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenant_plans WHERE tenant = NEW.tenant) THEN
        INSERT INTO tenant_plans (tenant, plan, valid_from, source) VALUES (NEW.tenant, NEW.plan, '-infinity', 'migration');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_first_plan AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_first_plan();

-- tenants.plan set by the release before (during an upgrade), to a plan
-- other than the open assignment's: a tenant whose only history is the
-- plan it had since always keeps a history of one plan since always (as
-- before versions); any other's open assignment is closed now and the
-- new plan opened. Writes of this release change the history first, and
-- then tenants.plan to agree with it: they do nothing here.
CREATE FUNCTION tenants_plan_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    open_row tenant_plans%ROWTYPE;
BEGIN
    SELECT * INTO open_row FROM tenant_plans WHERE tenant = NEW.tenant AND valid_to IS NULL;
    IF FOUND AND open_row.plan IS NOT DISTINCT FROM NEW.plan THEN
        RETURN NULL;
    END IF;
    IF NOT FOUND AND NEW.plan IS NULL THEN
        RETURN NULL;
    END IF;
    IF FOUND AND open_row.valid_from = '-infinity' AND open_row.source = 'migration' THEN
        IF NEW.plan IS NULL THEN
            DELETE FROM tenant_plans WHERE tenant = NEW.tenant AND valid_to IS NULL;
        ELSE
            UPDATE tenant_plans SET plan = NEW.plan WHERE tenant = NEW.tenant AND valid_to IS NULL;
        END IF;
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenant_plans WHERE tenant = NEW.tenant) THEN
        INSERT INTO tenant_plans (tenant, plan, valid_from, source) VALUES (NEW.tenant, NEW.plan, '-infinity', 'migration');
        RETURN NULL;
    END IF;
    UPDATE tenant_plans SET valid_to = greatest(now(), valid_from + interval '1 microsecond')
        WHERE tenant = NEW.tenant AND valid_to IS NULL;
    IF NEW.plan IS NOT NULL THEN
        INSERT INTO tenant_plans (tenant, plan, valid_from, source)
            SELECT NEW.tenant, NEW.plan, max(valid_to), 'migration' FROM tenant_plans WHERE tenant = NEW.tenant;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_plan_changed AFTER UPDATE OF plan ON tenants
    FOR EACH ROW WHEN (OLD.plan IS DISTINCT FROM NEW.plan) EXECUTE FUNCTION tenants_plan_changed();

-- The plan of a tenant and the version of a plan in force at an instant
-- (NULL: none), for the billing reads that join a period's quotas.
CREATE FUNCTION tenant_plan_at(p_tenant text, p_at timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT plan FROM tenant_plans
    WHERE tenant = p_tenant AND valid_from <= p_at AND (valid_to IS NULL OR valid_to > p_at)
$$;
CREATE FUNCTION plan_version_at(p_plan text, p_at timestamptz) RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT version FROM plan_versions
    WHERE plan = p_plan AND effective_from <= p_at ORDER BY effective_from DESC LIMIT 1
$$;
