-- Credit grants: extra allowance for a tenant on one meter's quotas, and
-- the append-only audit log that records who granted and voided them.
--
-- credit_grants
--   meter        a defined meter's name, or a metric (its implicit meter).
--   amount       units added to the allowance of every quota period of the
--                meter the grant is active in; > 0.
--   effective_at first hour the grant is active (stored rounded down to
--                the hour).
--   expires_at   the grant is active before it (stored rounded up to the
--                hour); NULL never expires.
--   priority     lower burns first; then earliest expiry (never last),
--                then created_at, then grant_id.
--   created_by   the admin key id, or a CLI actor.
--   voided_at    set once, by a void; the grant is inactive from then on.
CREATE TABLE credit_grants (
    grant_id     uuid        PRIMARY KEY,
    tenant       text        NOT NULL REFERENCES tenants (tenant),
    meter        text        NOT NULL CHECK (meter ~ '^[A-Za-z0-9._:-]{1,128}$'),
    amount       bigint      NOT NULL CHECK (amount > 0),
    effective_at timestamptz NOT NULL CHECK (effective_at = date_trunc('hour', effective_at, 'UTC')),
    expires_at   timestamptz NULL CHECK (expires_at = date_trunc('hour', expires_at, 'UTC') AND expires_at > effective_at),
    priority     integer     NOT NULL DEFAULT 10,
    reason       text        NOT NULL CHECK (reason <> '' AND char_length(reason) <= 1024),
    source       text        NOT NULL CHECK (source IN ('promotional', 'purchased', 'goodwill', 'refund')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL,
    voided_at    timestamptz NULL,
    voided_by    text        NULL,
    void_reason  text        NULL,
    CHECK ((voided_at IS NULL) = (voided_by IS NULL) AND (voided_at IS NULL) = (void_reason IS NULL))
);
CREATE INDEX credit_grants_tenant_meter ON credit_grants (tenant, meter);
CREATE INDEX credit_grants_expires_at ON credit_grants (expires_at) WHERE expires_at IS NOT NULL;

-- audit_log: one row per audited administrative action, never changed
-- or removed: UPDATE and DELETE are refused by a trigger (TRUNCATE too).
CREATE TABLE audit_log (
    id     bigserial   PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text        NOT NULL CHECK (actor <> ''),
    action text        NOT NULL CHECK (action <> ''),
    target text        NOT NULL,
    before jsonb       NULL,
    after  jsonb       NULL
);
CREATE INDEX audit_log_target ON audit_log (target, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
