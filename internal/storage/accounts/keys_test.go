package accounts_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

func newKey(role, tenant, scope string, expires *time.Time) accounts.NewKey {
	id := uuid.New().String()
	return accounts.NewKey{ID: id, Hash: []byte("hash of " + id), Role: role, Tenant: tenant, Scope: scope, ExpiresAt: expires}
}

// TestRotateKey: the successor has the old key's role, tenant and scope
// and names it; the old key keeps working for the grace, or is revoked
// at once with none; and a key that is revoked, expired, rotated before,
// missing or a bootstrap row is refused with its error, revoked before
// expired before rotated.
func TestRotateKey(t *testing.T) {
	ctx := context.Background()
	db := pgtest.New(t)
	st := accounts.New(db.Pool)
	if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	create := func(nk accounts.NewKey) accounts.Key {
		t.Helper()
		k, err := st.CreateKey(ctx, nk)
		if err != nil {
			t.Fatalf("CreateKey: %v", err)
		}
		return k
	}
	old := create(newKey(accounts.RoleTenant, "acme", accounts.ScopeRead, nil))
	next, was, err := st.RotateKey(ctx, old.ID, newKey("", "", "", nil), time.Hour)
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	if next.Role != accounts.RoleTenant || next.Tenant != "acme" || next.Scope != accounts.ScopeRead || next.RotatedFrom == nil || *next.RotatedFrom != old.ID {
		t.Fatalf("successor %+v, want a read key of acme rotated from %s", next, old.ID)
	}
	if was.ID != old.ID || was.RevokedAt != nil || was.ExpiresAt == nil || time.Until(*was.ExpiresAt) > time.Hour || time.Until(*was.ExpiresAt) < 50*time.Minute {
		t.Fatalf("old key after a rotation with 1h of grace: %+v", was)
	}
	_, was, err = st.RotateKey(ctx, next.ID, newKey("", "", "", nil), 0)
	if err != nil || was.RevokedAt == nil {
		t.Fatalf("rotation without grace: old key %+v, %v; want it revoked", was, err)
	}

	past := time.Now().Add(-time.Minute)
	revoked := create(newKey(accounts.RoleAdmin, "", "", nil))
	if err := st.RevokeKey(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}
	revokedExpired := create(newKey(accounts.RoleAdmin, "", "", &past))
	if err := st.RevokeKey(ctx, revokedExpired.ID); err != nil {
		t.Fatal(err)
	}
	expired := create(newKey(accounts.RoleAdmin, "", "", &past))
	rotated := create(newKey(accounts.RoleAdmin, "", "", nil))
	if _, _, err := st.RotateKey(ctx, rotated.ID, newKey("", "", "", nil), time.Hour); err != nil {
		t.Fatal(err)
	}
	rotatedThenExpired := create(newKey(accounts.RoleAdmin, "", "", nil))
	if _, _, err := st.RotateKey(ctx, rotatedThenExpired.ID, newKey("", "", "", nil), time.Hour); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = $1::uuid`, rotatedThenExpired.ID)
	bootstrap, err := st.RevokeBootstrapKey(ctx, uuid.New().String(), []byte("bootstrap secret hash"), auditlog.By{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, id string
		want     error
	}{
		{"revoked", revoked.ID, accounts.ErrKeyRevoked},
		{"revoked and expired", revokedExpired.ID, accounts.ErrKeyRevoked},
		{"expired", expired.ID, accounts.ErrKeyExpired},
		{"rotated before", rotated.ID, accounts.ErrKeyRotated},
		{"rotated before, then expired", rotatedThenExpired.ID, accounts.ErrKeyExpired},
		{"missing", uuid.New().String(), accounts.ErrNotFound},
		{"not a UUID", "nope", accounts.ErrNotFound},
		{"bootstrap row", bootstrap.ID, accounts.ErrNotFound},
	} {
		if _, _, err := st.RotateKey(ctx, tt.id, newKey("", "", "", nil), time.Hour); !errors.Is(err, tt.want) {
			t.Errorf("%s: RotateKey = %v, want %v", tt.name, err, tt.want)
		}
	}
}

// TestRotateKeyConcurrently: of rotations of one key at the same time,
// exactly one makes a successor; the others wait for it and are
// ErrKeyRotated (409 key_rotated), not a second live successor.
func TestRotateKeyConcurrently(t *testing.T) {
	ctx := context.Background()
	db := pgtest.New(t)
	st := accounts.New(db.Pool)
	for round := range 5 {
		old, err := st.CreateKey(ctx, newKey(accounts.RoleAdmin, "", "", nil))
		if err != nil {
			t.Fatal(err)
		}
		const n = 4
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, errs[i] = st.RotateKey(ctx, old.ID, newKey("", "", "", nil), time.Hour)
			}()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, accounts.ErrKeyRotated):
				t.Fatalf("round %d: concurrent rotation: %v, want ErrKeyRotated", round, err)
			}
		}
		var successors int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM api_keys WHERE rotated_from = $1::uuid`, old.ID).Scan(&successors); err != nil {
			t.Fatal(err)
		}
		if ok != 1 || successors != 1 {
			t.Fatalf("round %d: %d rotations succeeded, %d successors; want 1 and 1 (%s)", round, ok, successors, fmt.Sprint(errs))
		}
	}
}
