-- API keys against hostile clients: tenant key scopes, expiry, rotation,
-- last use, the revocation of the bootstrap key (ADMIN_API_KEY), keys only
-- for existing tenants, and no tenant or plan named "." or "..".

-- A tenant key's scope: write (sends and reads its tenant's events, the
-- meaning {"tenant": ...} always had) or read (reads only). Admin and
-- viewer keys have none.
ALTER TABLE api_keys ADD COLUMN scope text CHECK (scope IN ('write', 'read'));
UPDATE api_keys SET scope = 'write' WHERE role = 'tenant';
ALTER TABLE api_keys ADD CONSTRAINT api_keys_tenant_keys_have_a_scope CHECK ((role = 'tenant') = (scope IS NOT NULL));

-- expires_at: the key answers 401 expired_key from then on (a rotated
-- key's grace ends here too). last_used_at: the last authentication, kept
-- to the minute. rotated_from: the key this one replaced.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
ALTER TABLE api_keys ADD COLUMN rotated_from uuid REFERENCES api_keys (id);

-- A bootstrap row records that the ADMIN_API_KEY value with this hash was
-- revoked: every service refuses that value from the next request on,
-- across restarts. Such a row never authenticates anything.
ALTER TABLE api_keys ADD COLUMN bootstrap boolean NOT NULL DEFAULT false;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_bootstrap_rows_are_revoked_admins
    CHECK (NOT bootstrap OR (role = 'admin' AND revoked_at IS NOT NULL));

-- Keys only for existing tenants. NOT VALID: keys made before this file
-- for a tenant never created stay as they are; every new key is checked.
ALTER TABLE api_keys ADD CONSTRAINT api_keys_tenant_exists
    FOREIGN KEY (tenant) REFERENCES tenants (tenant) NOT VALID;

-- "." and ".." are path segments, not names: /v1/quotas/.. and
-- /v1/admin/tenants/.. cannot address them. NOT VALID for the same reason
-- as above; new and updated rows are checked.
ALTER TABLE tenants ADD CONSTRAINT tenants_name_is_not_a_dot_segment
    CHECK (tenant NOT IN ('.', '..')) NOT VALID;
ALTER TABLE plans ADD CONSTRAINT plans_name_is_not_a_dot_segment
    CHECK (name NOT IN ('.', '..')) NOT VALID;
