package rollup_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// spendEvents reads the spend.threshold events in the outbox, in order.
func spendEvents(t *testing.T, db *pgtest.DB) []billingevents.Event {
	t.Helper()
	return db.BillingEvents(t, billingevents.TypeSpendThreshold)
}

// statementCounter counts the statements run through a pool whose SQL
// contains one of its needles (every statement without needles; batches
// and copies are not counted).
type statementCounter struct {
	mu      sync.Mutex
	needles []string
	n       int
}

func (c *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if len(c.needles) == 0 {
		c.mu.Lock()
		c.n++
		c.mu.Unlock()
		return ctx
	}
	for _, s := range c.needles {
		if strings.Contains(d.SQL, s) {
			c.mu.Lock()
			c.n++
			c.mu.Unlock()
			break
		}
	}
	return ctx
}

func (c *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *statementCounter) take() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = 0
	return n
}

// spendHarness is an aggregator at a settable clock over a database whose
// plan "pro" prices api_calls at 1 usd a unit with spend thresholds 10 and
// 50, and whose plan "plain" prices them the same without thresholds.
type spendHarness struct {
	t       *testing.T
	db      *pgtest.DB
	agg     *rollup.Aggregator
	counter *statementCounter
	clock   time.Time
	offset  int64
	seq     int
}

func newSpendHarness(t *testing.T) *spendHarness {
	t.Helper()
	ctx := context.Background()
	db := pgtest.New(t)
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	// The projection's statement that the tenant exists (Reader.Bill).
	h := &spendHarness{t: t, db: db, counter: &statementCounter{needles: []string{"FROM tenants WHERE tenant = $1"}}}
	cfg.ConnConfig.Tracer = h.counter
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	h.agg = rollup.New(pool, rollup.Config{Group: "test", Topic: "usage.events", Now: func() time.Time { return h.clock }, Logger: slog.New(slog.DiscardHandler)})
	st := accounts.New(db.Pool)
	one := price.PerUnitPrice("1")
	for _, p := range []accounts.Plan{
		{Name: "pro", Quotas: []accounts.Quota{{Metric: "api_calls", Period: "month", StripeEventName: "api_calls", Price: &one}}, SpendThresholds: []string{"10", "50.00"}},
		{Name: "plain", Quotas: []accounts.Quota{{Metric: "api_calls", Period: "month", StripeEventName: "api_calls", Price: &one}}},
	} {
		if _, err := st.PutPlan(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	for tenant, plan := range map[string]string{"acme": "pro", "globex": "plain", "initech": "pro"} {
		if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: tenant, Plan: plan}); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// send applies one batch of tenant's api_calls of value at the clock, and
// returns how many statements of the projection it ran.
func (h *spendHarness) send(tenant string, values ...int64) int {
	h.t.Helper()
	return h.sendAt(tenant, h.clock, values...)
}

// sendAt is send of events that happened at at.
func (h *spendHarness) sendAt(tenant string, at time.Time, values ...int64) int {
	h.t.Helper()
	h.counter.take()
	recs := make([]rollup.Record, len(values))
	for i, v := range values {
		h.seq++
		e := events.Event{ID: fmt.Sprint("e", h.seq), Tenant: tenant, Metric: "api_calls", Value: v, Time: at}
		recs[i] = rollup.Record{Partition: 0, Offset: h.offset + int64(i), Key: []byte(tenant), Value: e.AppendJSON(nil), Time: h.clock}
	}
	from := h.offset
	if from == 0 {
		from = -1
	}
	res, err := h.agg.Apply(context.Background(), 0, from, recs)
	if err != nil {
		h.t.Fatal(err)
	}
	h.offset = res.NextOffset
	return h.counter.take()
}

// thresholds lists the spend events of tenant as "YYYY-MM threshold".
func (h *spendHarness) thresholds(tenant string) []string {
	h.t.Helper()
	var out []string
	for _, ev := range spendEvents(h.t, h.db) {
		if ev.Tenant == tenant {
			d := ev.Data.(billingevents.SpendThreshold)
			out = append(out, d.PeriodStart.Format("2006-01")+" "+string(d.Threshold))
		}
	}
	return out
}

// TestSpendThresholdsInTheBatch: a plan with thresholds 10 and 50 crosses
// one, then the other, across batches, each recorded and published once
// with the id the webhook notifications give it; a fenced replay and
// resent events record nothing new; a new period fires them again; a
// tenant whose plan has none runs no projection statement.
func TestSpendThresholdsInTheBatch(t *testing.T) {
	h := newSpendHarness(t)
	ctx := context.Background()
	// Half of November elapsed: the projection doubles the usage.
	h.clock = time.Date(2026, 11, 16, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		value int64
		want  string
	}{
		{3, ""},                           // total 3, projected 6
		{3, "2026-11 10"},                 // projected 12: 10 reached
		{1, "2026-11 10"},                 // projected 14: nothing new
		{20, "2026-11 10,2026-11 50.00"},  // projected 54: 50 reached
		{100, "2026-11 10,2026-11 50.00"}, // every threshold recorded: no projection
	}
	for i, s := range steps {
		if n := h.send("acme", s.value); (n == 0) != (i == len(steps)-1) {
			t.Fatalf("step %d: %d projection statements", i, n)
		}
		if got := strings.Join(h.thresholds("acme"), ","); got != s.want {
			t.Fatalf("step %d: spend.threshold %q, want %q", i, got, s.want)
		}
	}
	evs := spendEvents(t, h.db)
	d := evs[0].Data.(billingevents.SpendThreshold)
	if d.ProjectedTotal != "12.00" || d.Total != "6.00" || d.Currency != "usd" || d.Plan != "pro" || d.PlanVersion != 1 ||
		!d.PeriodEnd.Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) || !d.DetectedAt.Equal(h.clock) {
		t.Errorf("spend.threshold data %+v", d)
	}
	if id, _ := billingevents.SpendThresholdID("acme", d.PeriodStart, "10.000"); evs[0].ID != id {
		t.Errorf("event id %s, want the notifications' %s", evs[0].ID, id)
	}
	// A batch replayed from an offset already committed is fenced and
	// commits nothing; the same events resent at new offsets count once.
	if _, err := h.agg.Apply(ctx, 0, 0, []rollup.Record{{Partition: 0, Offset: 0, Key: []byte("acme"),
		Value: events.Event{ID: "e1", Tenant: "acme", Metric: "api_calls", Value: 3, Time: h.clock}.AppendJSON(nil), Time: h.clock}}); !errors.Is(err, rollup.ErrFenced) {
		t.Fatalf("replayed batch: %v", err)
	}
	h.seq = 0
	h.send("acme", 3, 3, 1, 20, 100)
	if got := len(h.thresholds("acme")); got != 2 {
		t.Fatalf("after a replay and resends: %d spend.threshold", got)
	}
	bs, err := usagedata.SpendBreaches(ctx, h.db.Pool, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 2 || bs[0].Threshold != "10" || bs[0].BreachID != evs[0].ID || bs[1].Threshold != "50.00" || bs[1].Total != "27.00" || bs[1].ProjectedTotal != "54.00" {
		t.Fatalf("spend breaches %+v", bs)
	}
	// A tenant without thresholds: no projection, nothing recorded.
	if n := h.send("globex", 1000); n != 0 {
		t.Errorf("a tenant without spend thresholds ran %d projection statements", n)
	}
	if got := h.thresholds("globex"); len(got) != 0 {
		t.Errorf("globex: %v", got)
	}
	// December: the thresholds fire again, once each.
	h.seq = 1000
	h.clock = time.Date(2026, 12, 16, 0, 0, 0, 0, time.UTC)
	h.send("acme", 10) // projected 20.67: 10
	if got, want := strings.Join(h.thresholds("acme"), ","), "2026-11 10,2026-11 50.00,2026-12 10"; got != want {
		t.Fatalf("in December: %q, want %q", got, want)
	}
	h.send("acme", 20) // projected 62: 50
	if got, want := strings.Join(h.thresholds("acme"), ","), "2026-11 10,2026-11 50.00,2026-12 10,2026-12 50.00"; got != want {
		t.Fatalf("after December: %q, want %q", got, want)
	}
}

// TestSpendProjectionEarlyInThePeriod: in a period's first minutes the
// projection extrapolates from a day, not from the minutes elapsed, so a
// little usage crosses no threshold it would not cross over a day, and
// GET /v1/bill projects alike.
func TestSpendProjectionEarlyInThePeriod(t *testing.T) {
	h := newSpendHarness(t)
	h.clock = time.Date(2026, 11, 1, 0, 10, 0, 0, time.UTC)
	h.send("initech", 1) // projected 30 (not 4320): 10 only
	if got, want := strings.Join(h.thresholds("initech"), ","), "2026-11 10"; got != want {
		t.Fatalf("early in the period: %q, want %q", got, want)
	}
	h.send("initech", 60)
	if got, want := strings.Join(h.thresholds("initech"), ","), "2026-11 10,2026-11 50.00"; got != want {
		t.Fatalf("then 60 more: %q, want %q", got, want)
	}
	b, err := usagedata.NewReader(h.db.Pool).Bill(context.Background(), "initech", h.clock)
	if err != nil {
		t.Fatal(err)
	}
	if b.Total != "61.00" || b.ProjectedTotal != "1830.00" {
		t.Errorf("GET /v1/bill's totals %s, %s; want 61.00 and 1830.00 (61 over a day of 30)", b.Total, b.ProjectedTotal)
	}
}

// TestSpendOfLateUsageAndUnknownTenants: usage of a period that has ended,
// counted late, is judged against that period's bill (its total, no
// projection) and recorded under that period; a tenant without a tenants
// row, limited by DEFAULT_PLAN, has no bill: its batches commit and judge
// no spend.
func TestSpendOfLateUsageAndUnknownTenants(t *testing.T) {
	h := newSpendHarness(t)
	h.clock = time.Date(2026, 12, 1, 0, 5, 0, 0, time.UTC)
	// November's last minute, counted five minutes into December: 12 is
	// November's total, past 10 and short of 50.
	h.sendAt("initech", time.Date(2026, 11, 30, 23, 59, 0, 0, time.UTC), 12)
	if got := strings.Join(h.thresholds("initech"), ","); got != "2026-11 10" {
		t.Fatalf("late November usage: spend.threshold %q, want November's 10 alone", got)
	}
	h.sendAt("initech", time.Date(2026, 11, 30, 23, 59, 30, 0, time.UTC), 40)
	if got := strings.Join(h.thresholds("initech"), ","); got != "2026-11 10,2026-11 50.00" {
		t.Fatalf("more late November usage: spend.threshold %q", got)
	}
	d := spendEvents(t, h.db)[1].Data.(billingevents.SpendThreshold)
	if d.Total != "52.00" || d.ProjectedTotal != "52.00" || !d.PeriodStart.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("late November's spend.threshold %+v: want total and projection 52.00", d)
	}

	ghost := rollup.New(h.db.Pool, rollup.Config{Group: "ghost", Topic: "usage.events", DefaultPlan: "pro",
		Now: func() time.Time { return h.clock }, Logger: slog.New(slog.DiscardHandler)})
	e := events.Event{ID: "g1", Tenant: "ghost", Metric: "api_calls", Value: 1000, Time: h.clock}
	if _, err := ghost.Apply(context.Background(), 0, -1, []rollup.Record{{Partition: 0, Offset: 0, Key: []byte("ghost"), Value: e.AppendJSON(nil), Time: h.clock}}); err != nil {
		t.Fatalf("a batch of a tenant without a row, on a default plan with spend thresholds: %v", err)
	}
	if got := h.thresholds("ghost"); len(got) != 0 {
		t.Fatalf("spend.threshold of a tenant without a bill: %v", got)
	}
}
