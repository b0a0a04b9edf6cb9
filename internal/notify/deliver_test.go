package notify_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/internal/notify"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/storage/webhooks"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// clock is a test's clock, moved by hand.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock       { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func (c *clock) Now() time.Time         { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Set(t time.Time)        { c.ns.Store(t.UnixNano()) }
func (c *clock) Add(d time.Duration)    { c.ns.Add(int64(d)) }
func (c *clock) After(t time.Time) bool { return c.Now().After(t) }

// receiver is a webhook receiver: it answers with answer(n) (n counts
// requests from 1) and records what it got.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []received
	answer func(n int, w http.ResponseWriter)
}

type received struct {
	body      string
	eventID   string
	signature string
}

func newReceiver(t testing.TB, answer func(n int, w http.ResponseWriter)) *receiver {
	r := &receiver{answer: answer}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, received{string(b), req.Header.Get(notify.HeaderEventID), req.Header.Get(notify.HeaderSignature)})
		n := len(r.got)
		r.mu.Unlock()
		r.answer(n, w)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) received() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

// setup makes a database with tenant acme and one endpoint of url that
// wants every kind, and returns it and the endpoint with its secret.
func setup(t testing.TB, url string, now time.Time) (*pgtest.DB, webhooks.Endpoint) {
	t.Helper()
	db := pgtest.New(t)
	db.Exec(t, `INSERT INTO tenants (tenant) VALUES ('acme'), ('globex')`)
	secret, err := notify.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	e, err := webhooks.CreateEndpoint(context.Background(), db.Pool, webhooks.Endpoint{ID: uuid.NewString(), Tenant: "acme", URL: url,
		Kinds: notify.Kinds, SpendThresholds: []string{"100.00", "200.00"}, Secret: secret, CreatedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	return db, e
}

func breach(id, tenant string) notify.Event {
	return notify.Event{ID: id, Type: notify.KindQuotaExceeded, Created: time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC), Tenant: tenant,
		Data: json.RawMessage(`{"breach_id":"` + id + `","threshold":"exceeded"}`)}
}

func deliveries(t *testing.T, db *pgtest.DB) []webhooks.Delivery {
	t.Helper()
	ds, err := webhooks.ListDeliveries(context.Background(), db.Pool, webhooks.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// TestDeliveryUnderReceiverFaults: a receiver that answers 500, takes
// longer than the timeout, redirects, or is slow but in time. Every
// delivery that fails is retried after its backoff (the clock moved, no
// sleeping) with the same body and event id, and each request's
// signature verifies with the reference verifier.
func TestDeliveryUnderReceiverFaults(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		// answer answers the n-th request.
		answer func(n int, w http.ResponseWriter)
		// failures before the delivery lands.
		failures int
		wantErr  string
	}{
		{"500 twice then 200", func(n int, w http.ResponseWriter) {
			if n <= 2 {
				http.Error(w, "upstream down", http.StatusInternalServerError)
			}
		}, 2, "HTTP 500: upstream down"},
		{"no answer within the timeout once", func(n int, w http.ResponseWriter) {
			if n == 1 {
				time.Sleep(1500 * time.Millisecond)
			}
		}, 1, "no answer within 500ms"},
		{"a redirect is a failure", func(n int, w http.ResponseWriter) {
			if n == 1 {
				w.Header().Set("Location", "https://example.com/")
				w.WriteHeader(http.StatusFound)
			}
		}, 1, "HTTP 302"},
		{"slow but in time", func(n int, w http.ResponseWriter) {
			time.Sleep(200 * time.Millisecond)
			w.WriteHeader(http.StatusNoContent)
		}, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rcv := newReceiver(t, tt.answer)
			clk := newClock(start)
			db, ep := setup(t, rcv.srv.URL, start)
			p := notify.Policy{Timeout: 500 * time.Millisecond}
			if n, err := notify.Queue(ctx, db.Pool, p, clk.Now(), breach("b1", "acme")); err != nil || n != 1 {
				t.Fatalf("Queue = %d, %v", n, err)
			}
			d := &notify.Dispatcher{DB: db.Pool, Policy: p, Now: clk.Now}
			for i := 0; i <= tt.failures; i++ {
				if n, err := d.RunOnce(ctx); err != nil || n != 1 {
					t.Fatalf("round %d: RunOnce = %d, %v", i, n, err)
				}
				ds := deliveries(t, db)
				if i < tt.failures {
					if ds[0].Status != webhooks.StatusPending || ds[0].LastError == nil || !strings.HasPrefix(*ds[0].LastError, tt.wantErr) {
						t.Fatalf("after failure %d: %+v, want pending with error %q", i+1, ds[0], tt.wantErr)
					}
					if !ds[0].NextAttemptAt.After(clk.Now()) {
						t.Fatalf("retry due at %s, not after now", ds[0].NextAttemptAt)
					}
					if n, _ := d.RunOnce(ctx); n != 0 {
						t.Fatal("a delivery was retried before its backoff ended")
					}
					clk.Set(ds[0].NextAttemptAt)
				}
			}
			ds := deliveries(t, db)
			if ds[0].Status != webhooks.StatusDelivered || ds[0].Attempts != tt.failures+1 {
				t.Fatalf("delivery %+v, want delivered after %d attempts", ds[0], tt.failures+1)
			}
			got := rcv.received()
			if len(got) != tt.failures+1 {
				t.Fatalf("receiver got %d requests, want %d", len(got), tt.failures+1)
			}
			for i, r := range got {
				if r.body != got[0].body || r.eventID != "b1" {
					t.Errorf("request %d: body or event id changed: %s %s", i, r.eventID, r.body)
				}
			}
			last := got[len(got)-1]
			if err := verify(last.signature, []byte(last.body), ep.Secret, clk.Now(), 5*time.Minute); err != nil {
				t.Errorf("signature %s: %v", last.signature, err)
			}
			var body struct {
				ID, Type, Tenant string
				Created          int64
				Data             map[string]any
			}
			if err := json.Unmarshal([]byte(last.body), &body); err != nil || body.ID != "b1" || body.Type != "quota.exceeded" ||
				body.Tenant != "acme" || body.Created != start.Unix() || body.Data["breach_id"] != "b1" {
				t.Errorf("body %s: %v", last.body, err)
			}
		})
	}
}

// TestRetryBudget: a receiver that always fails. After FailingAfter of
// failures only the endpoint is failing and its delivery parks (no more
// requests); when the retry budget ends the delivery is dead. Redelivery
// of the endpoint's dead deliveries makes it active and sends the same
// event id and body again, which now lands.
func TestRetryBudget(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	var healthy atomic.Bool
	rcv := newReceiver(t, func(_ int, w http.ResponseWriter) {
		if !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	clk := newClock(start)
	db, ep := setup(t, rcv.srv.URL, start)
	p := notify.Policy{Timeout: time.Second, RetryFor: 72 * time.Hour, FailingAfter: 24 * time.Hour}
	if _, err := notify.Queue(ctx, db.Pool, p, clk.Now(), breach("b1", "acme")); err != nil {
		t.Fatal(err)
	}
	d := &notify.Dispatcher{DB: db.Pool, Policy: p, Now: clk.Now}
	for range 1000 {
		if _, err := d.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		ds := deliveries(t, db)
		if ds[0].Status != webhooks.StatusPending {
			break
		}
		e, _ := webhooks.GetEndpoint(ctx, db.Pool, "acme", ep.ID)
		if e.State == webhooks.StateFailing {
			clk.Add(time.Hour) // parked: time passes
			continue
		}
		clk.Set(ds[0].NextAttemptAt)
	}
	e, err := webhooks.GetEndpoint(ctx, db.Pool, "acme", ep.ID)
	if err != nil || e.State != webhooks.StateFailing || e.FailingSince == nil || !e.FailingSince.Equal(start) {
		t.Fatalf("endpoint %+v %v, want failing since the first failure", e, err)
	}
	ds := deliveries(t, db)
	if ds[0].Status != webhooks.StatusDead || clk.Now().Before(start.Add(72*time.Hour)) {
		t.Fatalf("delivery %+v at %s, want dead after 72 h", ds[0], clk.Now())
	}
	n := len(rcv.received())
	// The attempt that finds the endpoint failing comes at most one
	// jittered MaxInterval (6 h + 50 %) after the 24 hours.
	if n < 8 || ds[0].LastAttemptAt.After(start.Add(24*time.Hour+9*time.Hour)) {
		t.Fatalf("%d attempts, the last at %s: want exponential retries until the endpoint is failing (24 h), then none", n, ds[0].LastAttemptAt)
	}
	// Redeliver every dead delivery of the endpoint: same event, same bytes.
	healthy.Store(true)
	got, err := notify.Redeliver(ctx, db.Pool, p, nil, ep.ID, "on-call", clk.Now())
	if err != nil || len(got) != 1 || got[0].Status != webhooks.StatusDead {
		t.Fatalf("Redeliver = %+v, %v", got, err)
	}
	if _, err := d.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	ds = deliveries(t, db)
	all := rcv.received()
	if ds[0].Status != webhooks.StatusDelivered || len(all) != n+1 || all[n].body != all[0].body || all[n].eventID != "b1" {
		t.Fatalf("after redelivery: %+v, %d requests", ds[0], len(all))
	}
	if e, _ := webhooks.GetEndpoint(ctx, db.Pool, "acme", ep.ID); e.State != webhooks.StateActive || e.LastSuccessAt == nil {
		t.Fatalf("endpoint %+v, want active with a success", e)
	}
	var audited int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'webhook.redeliver' AND actor = 'on-call'`).Scan(&audited); err != nil || audited != 1 {
		t.Fatalf("audit rows %d %v, want 1", audited, err)
	}
}

// TestOrderPerEndpoint: deliveries of one endpoint due together go in
// creation order, one after another.
func TestOrderPerEndpoint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	rcv := newReceiver(t, func(int, http.ResponseWriter) {})
	clk := newClock(start)
	db, _ := setup(t, rcv.srv.URL, start)
	var evs []notify.Event
	var want []string
	for i := range 12 {
		id := "b" + string(rune('a'+i))
		evs = append(evs, breach(id, "acme"))
		want = append(want, id)
	}
	if n, err := notify.Queue(ctx, db.Pool, notify.Policy{}, clk.Now(), evs...); err != nil || n != 12 {
		t.Fatalf("Queue = %d %v", n, err)
	}
	d := &notify.Dispatcher{DB: db.Pool, Now: clk.Now, Workers: 4}
	for {
		n, err := d.RunOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	var got []string
	for _, r := range rcv.received() {
		got = append(got, r.eventID)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("order %v, want %v", got, want)
	}
}

// TestRedeliveredMessageQueuesOnce: the same source message read again
// (a producer's retry that landed twice, at two offsets) queues one
// delivery; a second reader that read from a stale offset is fenced and
// queues nothing; a message of another tenant or kind queues nothing.
func TestRedeliveredMessageQueuesOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	db, ep := setup(t, "https://hooks.example.com/x", start)
	// The endpoint wants only quota.exceeded.
	ep.Kinds = []string{notify.KindQuotaExceeded}
	ep.SpendThresholds = nil
	if _, err := webhooks.UpdateEndpoint(ctx, db.Pool, ep, start); err != nil {
		t.Fatal(err)
	}
	msg := []byte(`{"breach_id":"b1","tenant":"acme","threshold":"exceeded","detected_at":"2026-11-21T19:00:00Z"}`)
	r := &notify.Reader{DB: db.Pool, Now: func() time.Time { return start }}
	const topic = notify.QuotaBreachesTopic
	if ok, err := webhooks.AdvanceOffset(ctx, db.Pool, topic, 0, -1, 0); err != nil || !ok {
		t.Fatal(ok, err)
	}
	n1, err := r.Apply(ctx, topic, 0, 0, 1, []record.Record{{Offset: 0, Value: msg}})
	if err != nil {
		t.Fatal(err)
	}
	n2, err := r.Apply(ctx, topic, 0, 1, 4, []record.Record{
		{Offset: 1, Value: msg},
		{Offset: 2, Value: []byte(`{"breach_id":"b2","tenant":"globex","threshold":"exceeded"}`)},
		{Offset: 3, Value: []byte(`{"breach_id":"b3","tenant":"acme","threshold":"warning"}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(ctx, topic, 0, 0, 1, []record.Record{{Offset: 0, Value: msg}}); err == nil {
		t.Fatal("a reader at a stale offset was not fenced")
	}
	if n1 != 1 || n2 != 0 || len(deliveries(t, db)) != 1 {
		t.Fatalf("queued %d then %d, %d deliveries; want 1, 0, 1", n1, n2, len(deliveries(t, db)))
	}
	if offs, _ := webhooks.Offsets(ctx, db.Pool, topic); offs[0] != 4 {
		t.Fatalf("stored offset %v, want 4", offs)
	}
}

// TestSpendThresholdFiresOnce: a threshold the projected bill reaches
// sends one spend.threshold per period, however often it is checked and
// however the projection moves; a higher threshold fires when reached;
// the next period fires again.
func TestSpendThresholdFiresOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC)
	clk := newClock(start)
	db, _ := setup(t, "https://hooks.example.com/x", start)
	projected := "150.00"
	var mu sync.Mutex
	c := &notify.Checks{DB: db.Pool, Now: clk.Now, Project: func(_ context.Context, tenant string, now time.Time) (notify.Spend, error) {
		mu.Lock()
		defer mu.Unlock()
		ps := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
		return notify.Spend{ProjectedTotal: projected, Total: "10.00", Currency: "usd", PeriodStart: ps, PeriodEnd: ps.AddDate(0, 1, 0)}, nil
	}}
	set := func(s string) { mu.Lock(); projected = s; mu.Unlock() }
	for i, tt := range []struct {
		projected string
		advance   time.Duration
		want      int
	}{
		{"150.00", 0, 1},                   // 100.00 reached
		{"150.00", time.Hour, 0},           // checked again
		{"90.00", time.Hour, 0},            // fell below and
		{"120.00", time.Hour, 0},           // rose again: still once
		{"200.00", time.Hour, 1},           // 200.00 reached (≥ is reached)
		{"250.00", 25 * 24 * time.Hour, 2}, // December: both again
	} {
		set(tt.projected)
		clk.Add(tt.advance)
		n, err := c.RunOnce(ctx)
		if err != nil || n != tt.want {
			t.Fatalf("check %d (%s): queued %d, %v; want %d", i, tt.projected, n, err, tt.want)
		}
	}
	var got []string
	for _, d := range deliveries(t, db) {
		var b struct{ Data notify.Spend }
		if err := json.Unmarshal([]byte(d.Body), &b); err != nil {
			t.Fatal(err)
		}
		got = append(got, b.Data.PeriodStart.Format("2006-01")+" "+b.Data.Threshold)
	}
	slices.Sort(got)
	if want := "2026-11 100.00,2026-11 200.00,2026-12 100.00,2026-12 200.00"; strings.Join(got, ",") != want {
		t.Fatalf("spend.threshold deliveries %v, want %s", got, want)
	}
}

// TestGrantExpiring: a grant expiring within the warning sends one
// grant.expiring, however often it is checked.
func TestGrantExpiring(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC)
	clk := newClock(start)
	db, _ := setup(t, "https://hooks.example.com/x", start)
	db.Exec(t, `INSERT INTO credit_grants (grant_id, tenant, meter, amount, effective_at, expires_at, priority, reason, source, created_by)
		VALUES ($1, 'acme', 'tokens', 500, $2, $3, 10, 'r', 'goodwill', 'test'),
		       ($4, 'acme', 'tokens', 500, $2, $5, 10, 'r', 'goodwill', 'test')`,
		uuid.NewString(), start.Add(-24*time.Hour), start.Add(48*time.Hour), uuid.NewString(), start.Add(10*24*time.Hour))
	c := &notify.Checks{DB: db.Pool, Now: clk.Now, GrantWarning: 72 * time.Hour}
	for i, want := range []int{1, 0} {
		n, err := c.RunOnce(ctx)
		if err != nil || n != want {
			t.Fatalf("check %d: %d %v, want %d", i, n, err, want)
		}
		clk.Add(time.Hour)
	}
	ds := deliveries(t, db)
	if len(ds) != 1 || ds[0].EventType != notify.KindGrantExpiring || !strings.Contains(ds[0].Body, `"amount":500`) {
		t.Fatalf("deliveries %+v", ds)
	}
}
