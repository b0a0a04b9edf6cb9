-- Postgres caps a b-tree index entry at about 2.7 kB, and a group key (up
-- to 5 property values of up to 1 KiB each, as a JSON array) or a unique
-- value can pass that. So a group key longer than 256 bytes is stored in
-- usage_windows and meter_uniques as its digest, 'sha256:' followed by the
-- 64 lower-case hex digits of the SHA-256 of the key; a stored key that
-- does not start with '[' is such a digest (a group key is a JSON array
-- or ''), and this table gives the key back. Unique values longer than
-- 256 bytes, or starting with 'sha256:', are stored in meter_uniques the
-- same way; a value is only ever counted, never read back, so they need
-- no table.
--   meter      the meter whose windows use the digest
--   digest     'sha256:' and 64 hex digits
--   group_key  the group key itself (not indexed, so of any length)
CREATE TABLE meter_group_keys (
    meter     text NOT NULL,
    digest    text NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    group_key text NOT NULL,
    PRIMARY KEY (meter, digest)
);
COMMENT ON TABLE meter_group_keys IS 'Group keys too long for an index entry, by the digest usage_windows and meter_uniques store in their place.';
