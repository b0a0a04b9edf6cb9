package webhooks_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/internal/storage/webhooks"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

func seed(t *testing.T, n int, now time.Time) (*pgtest.DB, webhooks.Endpoint) {
	t.Helper()
	db := pgtest.New(t)
	db.Exec(t, `INSERT INTO tenants (tenant) VALUES ('acme')`)
	e, err := webhooks.CreateEndpoint(context.Background(), db.Pool, webhooks.Endpoint{ID: uuid.NewString(), Tenant: "acme",
		URL: "https://hooks.example.com/", Kinds: []string{"quota.exceeded"}, Secret: "whsec_x", CreatedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	var ds []webhooks.Delivery
	for i := range n {
		ds = append(ds, webhooks.Delivery{EndpointID: e.ID, EventID: fmt.Sprint("e", i), EventType: "quota.exceeded", Tenant: "acme",
			Body: "{}", CreatedAt: now, RetryUntil: now.Add(time.Hour)})
	}
	if got, err := webhooks.Enqueue(context.Background(), db.Pool, ds...); err != nil || got != n {
		t.Fatalf("Enqueue = %d, %v", got, err)
	}
	return db, e
}

// TestEnqueueIsIdempotent: an event id an endpoint has is not queued
// again, nor is its body replaced.
func TestEnqueueIsIdempotent(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	db, e := seed(t, 3, now)
	n, err := webhooks.Enqueue(context.Background(), db.Pool,
		webhooks.Delivery{EndpointID: e.ID, EventID: "e1", EventType: "quota.exceeded", Tenant: "acme", Body: `{"other":1}`, CreatedAt: now, RetryUntil: now},
		webhooks.Delivery{EndpointID: e.ID, EventID: "e9", EventType: "quota.exceeded", Tenant: "acme", Body: "{}", CreatedAt: now, RetryUntil: now})
	if err != nil || n != 1 {
		t.Fatalf("Enqueue = %d, %v; want 1 new", n, err)
	}
	ds, _ := webhooks.ListDeliveries(context.Background(), db.Pool, webhooks.Filter{})
	for _, d := range ds {
		if d.EventID == "e1" && d.Body != "{}" {
			t.Fatalf("body replaced: %s", d.Body)
		}
	}
}

// TestClaimIsExclusive: senders claiming at once never get one delivery
// twice, and together they get every due one.
func TestClaimIsExclusive(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	const n = 200
	db, _ := seed(t, n, now)
	var mu sync.Mutex
	seen := map[int64]int{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				cs, err := webhooks.ClaimDue(context.Background(), db.Pool, now, time.Minute, 7)
				if err != nil {
					t.Error(err)
					return
				}
				if len(cs) == 0 {
					return
				}
				mu.Lock()
				for _, c := range cs {
					seen[c.ID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("%d deliveries claimed, want %d", len(seen), n)
	}
	for id, k := range seen {
		if k != 1 {
			t.Fatalf("delivery %d claimed %d times", id, k)
		}
	}
	// The lease: none is due again before it ends, all are after.
	if cs, _ := webhooks.ClaimDue(context.Background(), db.Pool, now.Add(59*time.Second), time.Minute, n); len(cs) != 0 {
		t.Fatalf("%d claimed again within the lease", len(cs))
	}
	if cs, _ := webhooks.ClaimDue(context.Background(), db.Pool, now.Add(time.Minute), time.Minute, n); len(cs) != n {
		t.Fatalf("%d claimed after the lease, want %d", len(cs), n)
	}
}
