package rollup_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// TestBillingPeriodsPlaceUsageAndResetQuotas: a tenant billed monthly on
// the 14th at 09:23:11 and one billed yearly on March 5th have their
// month windows on their billing periods: events either side of a
// boundary land in the period they belong to (a late one too, recorded
// as a correction of the closed period); a quota breached in one period
// starts fresh at the anchor; and /v1/quotas and /v1/bill (the reader)
// answer the current billing period [start, end).
func TestBillingPeriodsPlaceUsageAndResetQuotas(t *testing.T) {
	_, db := newAgg(t)
	setupPlans(t, db)
	ctx := context.Background()
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for tenant, ch := range map[string]billingcycle.Change{
		"acme":   {From: at("2026-10-14T09:23:11Z"), Cycle: billingcycle.Cycle{Anchor: at("2026-10-14T09:23:11Z"), Interval: billingcycle.Month, Count: 1}},
		"globex": {From: at("2026-03-05T00:00:00Z"), Cycle: billingcycle.Cycle{Anchor: at("2025-03-05T00:00:00Z"), Interval: billingcycle.Year, Count: 1}},
	} {
		if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			_, err := accounts.SetCycle(ctx, tx, tenant, ch, ch.From.Add(-time.Hour), "admin")
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	var clock atomic.Int64
	a := rollup.New(db.Pool, rollup.Config{Group: "test", Topic: "usage.events", Logger: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return time.Unix(0, clock.Load()).UTC() }})
	offset := int64(0)
	send := func(tenant string, value int64, eventTime time.Time) rollup.Result {
		t.Helper()
		recs := batch(offset, ev(fmt.Sprint("e", offset), tenant, "api_calls", value, eventTime))
		for i := range recs {
			recs[i].Time = time.Unix(0, clock.Load()).UTC() // appended now
		}
		res, err := a.Apply(ctx, 0, offset-boolToInt(offset == 0), recs)
		if err != nil {
			t.Fatal(err)
		}
		offset = res.NextOffset
		return res
	}
	window := func(tenant string, start time.Time) string {
		t.Helper()
		var v string
		if err := db.Pool.QueryRow(ctx, `SELECT coalesce((SELECT value::text FROM usage_windows WHERE tenant = $1 AND meter = 'api_calls'
			AND granularity = 'month' AND window_start = $2), 'none')`, tenant, start).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	type breach struct {
		threshold  string
		start, end time.Time
	}
	breaches := func(res rollup.Result) []breach {
		var out []breach
		for _, b := range res.Breaches {
			out = append(out, breach{b.Threshold, b.PeriodStart.UTC(), b.PeriodEnd.UTC()})
		}
		return out
	}
	octStart, novStart, decStart := at("2026-10-14T09:23:11Z"), at("2026-11-14T09:23:11Z"), at("2026-12-14T09:23:11Z")

	// Just before the anchor: the period from October 14th, blocked (limit
	// 100, burst 20, hard).
	clock.Store(at("2026-11-14T09:00:00Z").UnixNano())
	res := send("acme", 130, at("2026-11-14T09:00:00Z"))
	if got, want := fmt.Sprint(breaches(res)), fmt.Sprint([]breach{{"warning", octStart, novStart}, {"exceeded", octStart, novStart}, {"blocked", octStart, novStart}}); got != want {
		t.Fatalf("breaches before the anchor: %s, want %s", got, want)
	}
	// From the anchor on: a fresh allowance in the period from November 14th.
	clock.Store(at("2026-11-14T10:00:00Z").UnixNano())
	if res := send("acme", 50, novStart); len(res.Breaches) != 0 {
		t.Fatalf("first usage of the new period: breaches %v", breaches(res))
	}
	if res := send("acme", 30, at("2026-11-14T09:30:00Z")); fmt.Sprint(breaches(res)) != fmt.Sprint([]breach{{"warning", novStart, decStart}}) {
		t.Fatalf("80%% of the new period: %v", breaches(res))
	}
	// A late event of the closed period: counted there, a correction.
	if res := send("acme", 1, novStart.Add(-time.Second)); res.Late != 1 {
		t.Fatalf("late event: %+v, want it late", res)
	}
	if got := [3]string{window("acme", octStart), window("acme", novStart), window("acme", at("2026-11-01T00:00:00Z"))}; got != [3]string{"131", "80", "none"} {
		t.Fatalf("acme's month windows (Oct 14, Nov 14, Nov 1) = %v, want [131 80 none]", got)
	}
	var corrected string
	if err := db.Pool.QueryRow(ctx, `SELECT coalesce(sum(value), 0)::text FROM usage_corrections WHERE tenant = 'acme' AND period_start = $1`, octStart).Scan(&corrected); err != nil || corrected != "1" {
		t.Fatalf("correction of the closed period: %s (%v), want 1", corrected, err)
	}
	// The reader answers the current billing period.
	r := usagedata.NewReader(db.Pool)
	now := at("2026-11-21T19:00:00Z")
	_, qs, err := r.QuotasInForce(ctx, "acme", now)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, q := range qs {
		if q.Metric == "api_calls" {
			found = true
			if !q.PeriodStart.Equal(novStart) || !q.PeriodEnd.Equal(decStart) || q.Used.String() != "80" {
				t.Errorf("/v1/quotas: api_calls [%s, %s) used %s, want [%s, %s) used 80", q.PeriodStart, q.PeriodEnd, q.Used, novStart, decStart)
			}
		}
	}
	if !found {
		t.Errorf("/v1/quotas: no api_calls quota in %+v", qs)
	}
	bill, err := r.Bill(ctx, "acme", now)
	if err != nil {
		t.Fatal(err)
	}
	if !bill.PeriodStart.Equal(novStart) || !bill.PeriodEnd.Equal(decStart) {
		t.Errorf("/v1/bill: period [%s, %s), want [%s, %s)", bill.PeriodStart, bill.PeriodEnd, novStart, decStart)
	}

	// Yearly: usage of November 2026 counts in the year from March 5th;
	// the last hour before the next anchor is that year, the first after
	// it a fresh one.
	y26, y27, y28 := at("2026-03-05T00:00:00Z"), at("2027-03-05T00:00:00Z"), at("2028-03-05T00:00:00Z")
	clock.Store(now.UnixNano())
	if res := send("globex", 90, now); fmt.Sprint(breaches(res)) != fmt.Sprint([]breach{{"warning", y26, y27}}) {
		t.Fatalf("globex in November: %v", breaches(res))
	}
	clock.Store(at("2027-03-05T01:00:00Z").UnixNano())
	if res := send("globex", 20, y27.Add(-time.Hour)); fmt.Sprint(breaches(res)) != fmt.Sprint([]breach{{"exceeded", y26, y27}}) {
		t.Fatalf("globex before the anchor: %v (%+v; window %s)", breaches(res), res, window("globex", y26))
	}
	if res := send("globex", 10, y27.Add(30*time.Minute)); len(res.Breaches) != 0 {
		t.Fatalf("globex after the anchor: %v", breaches(res))
	}
	if got := [3]string{window("globex", y26), window("globex", y27), window("globex", at("2026-11-01T00:00:00Z"))}; got != [3]string{"110", "10", "none"} {
		t.Fatalf("globex's month windows = %v, want [110 10 none]", got)
	}
	_, qs, err = r.QuotasInForce(ctx, "globex", at("2027-03-05T01:00:00Z"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Metric == "api_calls" && (!q.PeriodStart.Equal(y27) || !q.PeriodEnd.Equal(y28)) {
			t.Errorf("globex /v1/quotas: [%s, %s), want [%s, %s)", q.PeriodStart, q.PeriodEnd, y27, y28)
		}
	}
}
