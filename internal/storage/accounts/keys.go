package accounts

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/usagemeter/metering/internal/storage/auditlog"
)

// Roles of API keys.
const (
	RoleTenant = "tenant"
	RoleAdmin  = "admin"
	RoleViewer = "viewer"
)

// Scopes of tenant keys.
const (
	// ScopeWrite sends and reads one tenant's events: the meaning
	// {"tenant": ...} always had.
	ScopeWrite = "write"
	// ScopeRead reads one tenant's usage, quotas and breaches, and sends
	// nothing.
	ScopeRead = "read"
)

// Errors of the key operations.
var (
	// ErrUnknownTenant: a tenant key names a tenant that does not exist.
	ErrUnknownTenant = errors.New("unknown tenant")
	// ErrKeyRevoked: a revoked key cannot be rotated.
	ErrKeyRevoked = errors.New("the key is revoked")
	// ErrKeyExpired: an expired key cannot be rotated (that would bring
	// its access back).
	ErrKeyExpired = errors.New("the key has expired")
	// ErrKeyRotated: a key is rotated once; rotate its successor instead.
	ErrKeyRotated = errors.New("the key was already rotated")
)

// Key is a stored API key (never the secret nor its hash).
type Key struct {
	ID     string `json:"id"`
	Role   string `json:"role"`
	Tenant string `json:"tenant,omitempty"`
	// Scope is ScopeWrite or ScopeRead for tenant keys, empty otherwise.
	Scope      string     `json:"scope,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
	// RotatedFrom is the id of the key this one replaced.
	RotatedFrom *string `json:"rotated_from"`
	// Bootstrap marks the record of a revoked ADMIN_API_KEY value; such a
	// row never authenticates.
	Bootstrap bool `json:"bootstrap,omitempty"`
}

// NewKey is what CreateKey stores.
type NewKey struct {
	ID        string
	Hash      []byte
	Role      string
	Tenant    string // tenant keys only
	Scope     string // tenant keys only
	ExpiresAt *time.Time
	// By audits the creation (key.create) or the rotation (key.rotate)
	// in its transaction; the zero By audits nothing. No audit document
	// holds a secret or its hash.
	By auditlog.By
}

const keyColumns = `id::text, role, coalesce(tenant, ''), coalesce(scope, ''), created_at,
	expires_at, last_used_at, revoked_at, rotated_from::text, bootstrap`

func scanKey(r pgx.Row) (Key, error) {
	var k Key
	err := r.Scan(keyFields(&k)...)
	return k, err
}

// keyFields are the fields of k that keyColumns fill, in their order.
func keyFields(k *Key) []any {
	return []any{&k.ID, &k.Role, &k.Tenant, &k.Scope, &k.CreatedAt, &k.ExpiresAt, &k.LastUsedAt, &k.RevokedAt, &k.RotatedFrom, &k.Bootstrap}
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// keyError maps the constraint a key insert broke to its error.
func keyError(err error, k NewKey) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.ConstraintName == "api_keys_tenant_exists" {
		return fmt.Errorf("key for tenant %s: %w", k.Tenant, ErrUnknownTenant)
	}
	return err
}

// CreateKey stores a key by the hash of its secret, audited as key.create
// (after: the key) when k.By names an actor. A tenant key for a tenant
// that does not exist is ErrUnknownTenant, and nothing is stored.
func (s *Store) CreateKey(ctx context.Context, k NewKey) (Key, error) {
	var out Key
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		out, err = scanKey(tx.QueryRow(ctx, `INSERT INTO api_keys (id, key_hash, role, tenant, scope, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING `+keyColumns,
			k.ID, k.Hash, k.Role, nullable(k.Tenant), nullable(k.Scope), k.ExpiresAt))
		if err != nil {
			return keyError(err, k)
		}
		return audit(ctx, tx, k.By, "key.create", KeyTarget(out.ID), nil, out)
	})
	if err != nil {
		return Key{}, fmt.Errorf("creating API key: %w", err)
	}
	return out, nil
}

// KeyByHash returns the key whose secret hashes to hash, whatever its
// state: the caller tells revoked, expired and bootstrap rows apart.
func (s *Store) KeyByHash(ctx context.Context, hash []byte) (Key, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE key_hash = $1`, hash))
	if errors.Is(err, pgx.ErrNoRows) {
		return Key{}, ErrNotFound
	}
	if err != nil {
		return Key{}, fmt.Errorf("looking up API key: %w", err)
	}
	return k, nil
}

// TouchInterval is the resolution of last_used_at: a key's use is
// written at most once per interval.
const TouchInterval = time.Minute

// TouchKey records that key id authenticated now, unless it was recorded
// less than TouchInterval ago (so many replicas and requests write once).
func (s *Store) TouchKey(ctx context.Context, id string) error {
	_, err := s.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = now()
		WHERE id = $1::uuid AND (last_used_at IS NULL OR last_used_at < now() - $2::bigint * interval '1 microsecond')`,
		id, TouchInterval.Microseconds())
	if err != nil {
		return fmt.Errorf("recording the use of API key %s: %w", id, err)
	}
	return nil
}

// RevokeKey revokes a key at once. Revoking a revoked key is a no-op. A
// Store WithAudit audits a revocation as key.revoke (before and after:
// the key).
func (s *Store) RevokeKey(ctx context.Context, id string) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanKey(tx.QueryRow(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE id::text = $1 FOR UPDATE`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil || before.RevokedAt != nil {
			return err
		}
		after, err := scanKey(tx.QueryRow(ctx, `UPDATE api_keys SET revoked_at = now() WHERE id::text = $1 RETURNING `+keyColumns, id))
		if err != nil {
			return err
		}
		return audit(ctx, tx, s.by, "key.revoke", KeyTarget(after.ID), before, after)
	})
	if errors.Is(err, ErrNotFound) {
		return err
	}
	if err != nil {
		return fmt.Errorf("revoking API key %s: %w", id, err)
	}
	return nil
}

// RevokeBootstrapKey records that the ADMIN_API_KEY value hashing to hash
// is revoked, under id if no row has that hash yet. A stored key with the
// same hash (an operator who set ADMIN_API_KEY to a stored key's secret)
// is revoked too. It returns the row that now refuses the value. A
// revocation is audited by by as key.revoke of that row (before: the row,
// null when there was none).
func (s *Store) RevokeBootstrapKey(ctx context.Context, id string, hash []byte, by auditlog.By) (Key, error) {
	var k Key
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var before any
		prev, err := scanKey(tx.QueryRow(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE key_hash = $1 FOR UPDATE`, hash))
		switch {
		case err == nil:
			before = prev
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		k, err = scanKey(tx.QueryRow(ctx, `INSERT INTO api_keys (id, key_hash, role, bootstrap, revoked_at)
			VALUES ($1, $2, 'admin', true, now())
			ON CONFLICT (key_hash) DO UPDATE SET revoked_at = coalesce(api_keys.revoked_at, now())
			RETURNING `+keyColumns, id, hash))
		if err != nil || (before != nil && prev.RevokedAt != nil) {
			return err // revoked before: nothing changed
		}
		return audit(ctx, tx, by, "key.revoke", KeyTarget(k.ID), before, k)
	})
	if err != nil {
		return Key{}, fmt.Errorf("revoking the bootstrap key: %w", err)
	}
	return k, nil
}

// RotatedKey is a rotated key as key.rotate audits it after the
// rotation: the old key as it now is, and its successor.
type RotatedKey struct {
	Key
	Successor Key `json:"successor"`
}

// RotateKey makes next, a key with the role, tenant and scope of key
// oldID, rotated from it, in one transaction. The old key stays valid for
// grace (its expiry moves no later than now + grace); a zero grace
// revokes it at once. It returns the new key and the old one as it now
// is. A revoked key is ErrKeyRevoked, an expired one ErrKeyExpired, one
// rotated before ErrKeyRotated (checked in that order); a missing one (or
// a bootstrap row) ErrNotFound.
//
// The old key's row is read once, locked: concurrent rotations of one key
// take turns, and the successor is inserted only if the key has none yet,
// checked by the insert itself after the lock is held, so the second of
// two rotations sees the first's successor and is ErrKeyRotated.
//
// next.By audits the rotation as key.rotate of the old key (before: the
// old key; after: RotatedKey).
func (s *Store) RotateKey(ctx context.Context, oldID string, next NewKey, grace time.Duration) (newKey, oldKey Key, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var old Key
		var expired bool
		err := tx.QueryRow(ctx, `SELECT `+keyColumns+`, coalesce(expires_at <= now(), false) FROM api_keys
			WHERE id::text = $1 AND NOT bootstrap FOR UPDATE`, oldID).Scan(append(keyFields(&old), &expired)...)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		case old.RevokedAt != nil:
			return ErrKeyRevoked
		case expired:
			return ErrKeyExpired
		}
		next.Role, next.Tenant, next.Scope = old.Role, old.Tenant, old.Scope
		newKey, err = scanKey(tx.QueryRow(ctx, `INSERT INTO api_keys (id, key_hash, role, tenant, scope, expires_at, rotated_from)
			SELECT $1, $2, $3, $4, $5, $6, $7::uuid
			WHERE NOT EXISTS (SELECT 1 FROM api_keys WHERE rotated_from = $7::uuid)
			RETURNING `+keyColumns,
			next.ID, next.Hash, next.Role, nullable(next.Tenant), nullable(next.Scope), next.ExpiresAt, old.ID))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrKeyRotated
		}
		if err != nil {
			return keyError(err, next)
		}
		if grace <= 0 {
			oldKey, err = scanKey(tx.QueryRow(ctx, `UPDATE api_keys SET revoked_at = now()
				WHERE id = $1::uuid RETURNING `+keyColumns, old.ID))
		} else {
			oldKey, err = scanKey(tx.QueryRow(ctx, `UPDATE api_keys
				SET expires_at = least(coalesce(expires_at, 'infinity'), now() + $2::bigint * interval '1 microsecond')
				WHERE id = $1::uuid RETURNING `+keyColumns, old.ID, grace.Microseconds()))
		}
		if err != nil {
			return err
		}
		return audit(ctx, tx, next.By, "key.rotate", KeyTarget(old.ID), old, RotatedKey{Key: oldKey, Successor: newKey})
	})
	if err != nil {
		return Key{}, Key{}, fmt.Errorf("rotating API key %s: %w", oldID, err)
	}
	return newKey, oldKey, nil
}

// ListKeys returns every key, newest first.
func (s *Store) ListKeys(ctx context.Context) ([]Key, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+keyColumns+` FROM api_keys ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("listing API keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) { return scanKey(r) })
	if err != nil {
		return nil, fmt.Errorf("listing API keys: %w", err)
	}
	return keys, nil
}
