package rollup_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
)

// levels names breaches as "threshold" or "threshold:percent".
func levels(bs []quota.Breach) []string {
	var out []string
	for _, b := range bs {
		if b.Percent != 0 {
			out = append(out, fmt.Sprintf("%s:%d", b.Threshold, b.Percent))
			continue
		}
		out = append(out, b.Threshold)
	}
	return out
}

// clocked is an aggregator whose clock the test moves, and a sender of
// batches of partition 0 stamped with that clock.
type clocked struct {
	t      *testing.T
	db     *pgtest.DB
	clock  time.Time
	offset int64
	n      int
}

func (c *clocked) agg() *rollup.Aggregator {
	return rollup.New(c.db.Pool, rollup.Config{Group: "test", Topic: "usage.events", Now: func() time.Time { return c.clock },
		Logger: slog.New(slog.DiscardHandler)})
}

func (c *clocked) records(tenant, metric string, values ...int64) []rollup.Record {
	var items []any
	for _, v := range values {
		c.n++
		items = append(items, ev(fmt.Sprint("ev-", c.n), tenant, metric, v, c.clock))
	}
	recs := batch(c.offset, items...)
	for i := range recs {
		recs[i].Time = c.clock
	}
	return recs
}

func (c *clocked) apply(a *rollup.Aggregator, recs []rollup.Record) rollup.Result {
	c.t.Helper()
	res, err := a.Apply(context.Background(), 0, c.offset-boolToInt(c.offset == 0), recs)
	if err != nil {
		c.t.Fatal(err)
	}
	c.offset = res.NextOffset
	return res
}

func TestChosenThresholdsRecordedOnce(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	st := accounts.New(db.Pool)
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "tiers", Quotas: []accounts.Quota{
		{Metric: "api_calls", Limit: ptr(100), Period: "month", Hard: true, Thresholds: []int{50, 80, 90}, StripeEventName: "api_calls"},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "tiers"}); err != nil {
		t.Fatal(err)
	}
	c := &clocked{t: t, db: db, clock: now}
	a := c.agg()
	steps := []struct {
		values []int64
		want   []string
	}{
		{[]int64{49}, nil},
		{[]int64{1}, []string{"warning:50"}},
		{[]int64{30}, []string{"warning:80"}},
		{[]int64{5}, nil},
		{[]int64{5}, []string{"warning:90"}},
		{[]int64{10}, []string{"exceeded"}},
		{[]int64{1}, []string{"blocked"}},
	}
	var replay []rollup.Record
	var replayFrom int64
	for i, s := range steps {
		recs := c.records("acme", "api_calls", s.values...)
		if i == 2 {
			replay, replayFrom = recs, c.offset
		}
		if got := levels(c.apply(a, recs).Breaches); !slices.Equal(got, s.want) {
			t.Fatalf("step %d (+%v): breaches %v, want %v", i, s.values, got, s.want)
		}
	}
	// A batch applied again from where it started is fenced: nothing new.
	if _, err := a.Apply(ctx, 0, replayFrom, replay); !errors.Is(err, rollup.ErrFenced) {
		t.Fatalf("replaying a committed batch: %v, want ErrFenced", err)
	}
	// After a crash a new aggregator reads on from the stored offset; the
	// producer's resends of counted events cross nothing again.
	again := append([]rollup.Record(nil), replay...)
	for i := range again {
		again[i].Offset = c.offset + int64(i)
	}
	if res := c.apply(c.agg(), again); len(res.Breaches) != 0 {
		t.Fatalf("resends after a restart recorded %v", levels(res.Breaches))
	}

	var rows []string
	r, err := db.Pool.Query(ctx, `SELECT threshold, percent FROM quota_breaches WHERE tenant = 'acme' ORDER BY detected_at, threshold DESC, percent`)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var th string
		var p int
		if err := r.Scan(&th, &p); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, fmt.Sprintf("%s %d", th, p))
	}
	r.Close()
	if want := []string{"warning 50", "warning 80", "warning 90", "exceeded 0", "blocked 0"}; !slices.Equal(rows, want) {
		t.Fatalf("quota_breaches %q, want %q", rows, want)
	}
	// The messages for quota.breaches: one per row, a warning's carrying
	// its percent, the 80 % warning under the id it always had.
	var got []string
	for _, v := range db.Outbox(t, topics.QuotaBreaches) {
		var b quota.Breach
		if err := json.Unmarshal(v, &b); err != nil {
			t.Fatal(err)
		}
		got = append(got, levels([]quota.Breach{b})...)
		if b.Threshold == "warning" && b.Percent == 80 && b.BreachID != quota.BreachID("acme", "api_calls", b.PeriodStart, "warning") {
			t.Errorf("the 80 %% warning's id %s is not the one it had", b.BreachID)
		}
	}
	if want := []string{"warning:50", "warning:80", "warning:90", "exceeded", "blocked"}; !slices.Equal(got, want) {
		t.Fatalf("quota.breaches messages %v, want %v", got, want)
	}
}

func TestGraceBeforeBlock(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	st := accounts.New(db.Pool)
	amount := int64(50)
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "graced", Quotas: []accounts.Quota{
		{Metric: "api_calls", Limit: ptr(100), Period: "month", Hard: true, Grace: &accounts.Grace{Duration: "24h"}, StripeEventName: "api_calls"},
		{Metric: "tokens", Limit: ptr(100), Period: "month", Hard: true, Grace: &accounts.Grace{Amount: &amount}, StripeEventName: "tokens"},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "graced"}); err != nil {
		t.Fatal(err)
	}
	t0 := now.Add(-48 * time.Hour)
	c := &clocked{t: t, db: db, clock: t0}
	a := c.agg()
	reader := usagedata.NewReader(db.Pool)
	grace := func(metric string) usagedata.QuotaStatus {
		t.Helper()
		_, qs, err := reader.Quotas(ctx, "acme", c.clock)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if q.Metric == metric {
				return q
			}
		}
		t.Fatalf("no quota on %s", metric)
		return usagedata.QuotaStatus{}
	}
	steps := []struct {
		after  time.Duration
		metric string
		value  int64
		want   []string
	}{
		{0, "api_calls", 101, []string{"warning:80", "exceeded"}}, // past the limit: the grace starts
		{23 * time.Hour, "api_calls", 10, nil},                    // within 24 h: still exceeded
		{24 * time.Hour, "api_calls", 1, []string{"blocked"}},     // the grace ran out
		{24 * time.Hour, "tokens", 140, []string{"warning:80", "exceeded"}},
		{24 * time.Hour, "tokens", 10, nil},                // 150 = limit + amount
		{24 * time.Hour, "tokens", 1, []string{"blocked"}}, // beyond it
	}
	for i, s := range steps {
		c.clock = t0.Add(s.after)
		if got := levels(c.apply(a, c.records("acme", s.metric, s.value)).Breaches); !slices.Equal(got, s.want) {
			t.Fatalf("step %d (%s +%d at +%s): breaches %v, want %v", i, s.metric, s.value, s.after, got, s.want)
		}
		if i == 1 {
			q := grace("api_calls")
			if q.State != quota.Exceeded || q.Grace == nil || !q.Grace.Active || q.Grace.EndsAt == nil || !q.Grace.EndsAt.Equal(t0.Add(24*time.Hour)) {
				t.Fatalf("GET /v1/quotas in the grace: %s %+v", q.State, q.Grace)
			}
		}
		if i == 4 {
			q := grace("tokens")
			if q.State != quota.Exceeded || !q.Grace.Active || q.Grace.EndsAbove.Int64() != 150 {
				t.Fatalf("GET /v1/quotas in the grace by amount: %s %+v", q.State, q.Grace)
			}
		}
	}
	if q := grace("api_calls"); q.State != quota.Blocked || q.Grace.Active {
		t.Fatalf("GET /v1/quotas after the grace: %s %+v", q.State, q.Grace)
	}
}
