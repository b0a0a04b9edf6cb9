package periodclose_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/periodclose"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestGrantExpiredOnce: a grant that expired unused is announced once
// with grant.expired, in the transaction that records it, and only once
// the usage before its expiry is counted (every partition's watermark
// past it by the lateness); a grant voided before it expired is not;
// two closers at once announce it once.
func TestGrantExpiredOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name) VALUES ('pro', 'tokens', 1000, 'month', 'tokens')`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan) VALUES ('acme', 'pro')`)
	const expired, voided, later = "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a01", "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a02", "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a03"
	db.Exec(t, `INSERT INTO credit_grants (grant_id, tenant, meter, amount, effective_at, expires_at, reason, source, created_by, voided_at, voided_by, void_reason) VALUES
		($1, 'acme', 'tokens', 500, $4, $5, 'r', 'goodwill', 'admin', NULL, NULL, NULL),
		($2, 'acme', 'tokens', 300, $4, $5, 'r', 'goodwill', 'admin', $6, 'admin', 'twice'),
		($3, 'acme', 'tokens', 200, $4, $7, 'r', 'goodwill', 'admin', NULL, NULL, NULL)`,
		expired, voided, later, oct, nov.Add(14*24*time.Hour), nov.Add(24*time.Hour), dec.Add(time.Hour))
	offset := int64(-1)
	watermark := func(at time.Time) {
		for p := range 2 {
			if ok, err := usagedata.AdvanceOffsetTo(ctx, db.Pool, group, topic, p, offset, offset+100, at); err != nil || !ok {
				t.Fatalf("partition %d: %v %v", p, ok, err)
			}
		}
		offset += 100
	}
	clock := now
	closer := func() *periodclose.Closer {
		return periodclose.New(db.Pool, periodclose.Config{Group: group, Topic: topic, Lateness: time.Hour,
			Usage: usagedata.NewReader(db.Pool), Now: func() time.Time { return clock }})
	}
	expiries := func() []billingevents.GrantExpired {
		t.Helper()
		rows, err := db.Pool.Query(ctx, `SELECT o.msg_value FROM outbox o JOIN credit_grant_expiries e ON e.event_id = o.headers->>'event-id'
			WHERE o.topic = 'billing.events' ORDER BY o.id`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []billingevents.GrantExpired
		for rows.Next() {
			var v []byte
			if err := rows.Scan(&v); err != nil {
				t.Fatal(err)
			}
			ev, err := billingevents.Decode(v)
			if err != nil || ev.Tenant != "acme" {
				t.Fatalf("%v %+v", err, ev)
			}
			out = append(out, ev.Data.(billingevents.GrantExpired))
		}
		var queued int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE topic = 'billing.events'`).Scan(&queued); err != nil {
			t.Fatal(err)
		}
		if queued != len(out) {
			t.Fatalf("%d events queued, %d recorded", queued, len(out))
		}
		return out
	}

	// No watermark yet: nothing is judged.
	if n, err := closer().ExpireGrants(ctx); err != nil || n != 0 || len(expiries()) != 0 {
		t.Fatalf("without watermarks: %d %v", n, err)
	}
	// Counted to December 00:30 + 1h: the November expiry is announced,
	// the one at December 01:00 waits.
	watermark(dec.Add(90 * time.Minute))
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if _, err := closer().ExpireGrants(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n, err := closer().ExpireGrants(ctx); err != nil || n != 0 {
		t.Fatalf("again: %d %v", n, err)
	}
	got := expiries()
	if len(got) != 1 || got[0].GrantID != expired || got[0].Remaining != "500" || got[0].Unit != "units" || !got[0].ExpiredAt.Equal(nov.Add(14*24*time.Hour)) {
		t.Fatalf("after the first scans: %+v", got)
	}
	// Later, counted past December 01:00 + 1h: the second is announced.
	watermark(dec.Add(3 * time.Hour))
	clock = dec.Add(5 * time.Hour)
	if n, err := closer().ExpireGrants(ctx); err != nil || n != 1 {
		t.Fatalf("later: %d %v", n, err)
	}
	if got := expiries(); len(got) != 2 || got[1].GrantID != later || got[1].Remaining != "200" {
		t.Fatalf("later: %+v", got)
	}
}
