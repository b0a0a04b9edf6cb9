package credits_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/storage/credits"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

const grantID = "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8b"

func setup(t *testing.T) (*pgtest.DB, context.Context) {
	t.Helper()
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := accounts.New(db.Pool).PutTenant(ctx, accounts.Tenant{Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	return db, ctx
}

func grant() credits.Grant {
	exp := time.Date(2026, 12, 1, 10, 0, 1, 0, time.UTC)
	return credits.Grant{ID: grantID, Tenant: "acme", Meter: "tokens", Amount: 500,
		EffectiveAt: time.Date(2026, 11, 3, 9, 59, 0, 0, time.FixedZone("x", 3600)), ExpiresAt: &exp,
		Priority: 1, Reason: "launch promotion", Source: "promotional", CreatedBy: "key-1"}
}

// TestCreateAndVoidAreAudited: a grant's times are stored as whole hours
// (effective down, expiry up); creating and voiding it each append one
// audit row with the state before and after.
func TestCreateAndVoidAreAudited(t *testing.T) {
	t.Parallel()
	db, ctx := setup(t)
	g, created, err := credits.Create(ctx, db.Pool, grant())
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	if want := time.Date(2026, 11, 3, 8, 0, 0, 0, time.UTC); !g.EffectiveAt.Equal(want) {
		t.Errorf("effective_at = %s, want %s", g.EffectiveAt, want)
	}
	if want := time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC); !g.ExpiresAt.Equal(want) {
		t.Errorf("expires_at = %s, want %s", g.ExpiresAt, want)
	}
	v, err := credits.Void(ctx, db.Pool, "acme", grantID, "key-2", "sent in error", time.Date(2026, 11, 4, 0, 0, 0, 0, time.UTC))
	if err != nil || v.VoidedAt == nil || *v.VoidedBy != "key-2" || *v.VoidReason != "sent in error" {
		t.Fatalf("void: %+v %v", v, err)
	}
	log, _, err := auditlog.List(ctx, db.Pool, auditlog.Filter{Target: auditlog.Match{Value: credits.Target(grantID)}})
	if err != nil || len(log) != 2 {
		t.Fatalf("audit rows: %+v %v", log, err)
	}
	if log[0].Action != "grant.void" || log[0].Actor != "key-2" || log[0].Before == nil || log[0].After == nil || log[0].Note != "sent in error" ||
		log[1].Action != "grant.create" || log[1].Actor != "key-1" || log[1].Before != nil {
		t.Errorf("audit rows: %+v", log)
	}
}

// TestCreateIsIdempotent: the same id with the same terms answers the
// stored grant (not created again, not audited again); with other terms
// it is refused.
func TestCreateIsIdempotent(t *testing.T) {
	t.Parallel()
	db, ctx := setup(t)
	first, _, err := credits.Create(ctx, db.Pool, grant())
	if err != nil {
		t.Fatal(err)
	}
	again, created, err := credits.Create(ctx, db.Pool, grant())
	if err != nil || created || again.ID != first.ID || !again.CreatedAt.Equal(first.CreatedAt) {
		t.Fatalf("again: %+v %v %v", again, created, err)
	}
	other := grant()
	other.Amount = 501
	if _, _, err := credits.Create(ctx, db.Pool, other); !errors.Is(err, credits.ErrIDConflict) {
		t.Fatalf("other terms: %v", err)
	}
	if log, _, _ := auditlog.List(ctx, db.Pool, auditlog.Filter{}); len(log) != 1 {
		t.Fatalf("%d audit rows, want 1", len(log))
	}
	bad := grant()
	bad.ID, bad.Tenant = "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8c", "nobody"
	if _, _, err := credits.Create(ctx, db.Pool, bad); err == nil {
		t.Fatal("a grant of an unknown tenant was stored")
	}
}

// TestVoidOnce: a grant is voided once; another tenant's id is not found.
func TestVoidOnce(t *testing.T) {
	t.Parallel()
	db, ctx := setup(t)
	if _, _, err := credits.Create(ctx, db.Pool, grant()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := credits.Void(ctx, db.Pool, "globex", grantID, "k", "r", now); !errors.Is(err, credits.ErrNotFound) {
		t.Fatalf("other tenant: %v", err)
	}
	if _, err := credits.Void(ctx, db.Pool, "acme", grantID, "k", "r", now); err != nil {
		t.Fatal(err)
	}
	if _, err := credits.Void(ctx, db.Pool, "acme", grantID, "k", "r", now); !errors.Is(err, credits.ErrVoided) {
		t.Fatalf("twice: %v", err)
	}
	if log, _, _ := auditlog.List(ctx, db.Pool, auditlog.Filter{Action: auditlog.Match{Value: "grant.void"}}); len(log) != 1 {
		t.Fatalf("%d void audit rows, want 1", len(log))
	}
}

// TestOverlappingAndExpired: the reads find grants by the time they are
// active, a voided grant ending at its void.
func TestOverlappingAndExpired(t *testing.T) {
	t.Parallel()
	db, ctx := setup(t)
	g := grant() // active [2026-11-03T08, 2026-12-01T11)
	if _, _, err := credits.Create(ctx, db.Pool, g); err != nil {
		t.Fatal(err)
	}
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		from, to time.Time
		want     int
	}{
		{nov, nov.AddDate(0, 1, 0), 1},
		{nov, time.Date(2026, 11, 3, 8, 0, 0, 0, time.UTC), 0},
		{time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC), nov.AddDate(0, 2, 0), 0},
	} {
		got, err := credits.Overlapping(ctx, db.Pool, []string{"acme", "globex"}, tt.from, tt.to)
		if err != nil || len(got) != tt.want {
			t.Errorf("Overlapping(%s, %s) = %d %v, want %d", tt.from, tt.to, len(got), err, tt.want)
		}
	}
	if got, err := credits.Expired(ctx, db.Pool, nov.AddDate(0, 1, 0), nov.AddDate(0, 2, 0)); err != nil || len(got) != 1 {
		t.Fatalf("Expired = %d %v", len(got), err)
	}
	if _, err := credits.Void(ctx, db.Pool, "acme", grantID, "k", "r", time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	if got, _ := credits.Expired(ctx, db.Pool, nov.AddDate(0, 1, 0), nov.AddDate(0, 2, 0)); len(got) != 0 {
		t.Fatalf("a grant voided before its expiry is listed as expired")
	}
	if got, _ := credits.OfMeter(ctx, db.Pool, "acme", "tokens", time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC), nov.AddDate(0, 1, 0)); len(got) != 0 {
		t.Fatalf("a voided grant is active after its void")
	}
}
