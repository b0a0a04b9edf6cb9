package rollup_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// BenchmarkApplySpend measures a batch of 10,000 events over 1,000
// tenants on a priced plan: without spend thresholds (the baseline), with
// thresholds on the plan of 10 of the tenants, and on the plan of all of
// them (a projection per tenant of the batch), and on the plan of all of
// them with every threshold already reached (no projection). Each case
// reports events/s; compare the cases of one run.
func BenchmarkApplySpend(b *testing.B) {
	const tenants, perBatch = 1000, 10000
	for _, c := range []struct {
		name        string
		withSpend   int // tenants on the plan with thresholds
		spendPlanTs []string
	}{
		{"no-thresholds", 0, nil},
		{"thresholds-10-tenants", 10, []string{"1000000", "2000000"}},
		{"thresholds-all-tenants", tenants, []string{"1000000", "2000000"}},
		// Reached in the first batch: later batches read what is recorded
		// and project nothing.
		{"thresholds-all-tenants-all-reached", tenants, []string{"0.001"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			db := pgtest.New(b)
			st := accounts.New(db.Pool)
			unit := price.PerUnitPrice("0.001")
			quotas := []accounts.Quota{
				{Metric: "api_calls", Period: "month", StripeEventName: "api_calls", Price: &unit},
				{Metric: "tokens", Period: "month", StripeEventName: "tokens", Price: &unit},
			}
			for _, p := range []accounts.Plan{{Name: "plain", Quotas: quotas}, {Name: "spend", Quotas: quotas, SpendThresholds: c.spendPlanTs}} {
				if _, err := st.PutPlan(ctx, p); err != nil {
					b.Fatal(err)
				}
			}
			for i := range tenants {
				plan := "plain"
				if i < c.withSpend {
					plan = "spend"
				}
				if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: fmt.Sprint("tenant-", i), Plan: plan}); err != nil {
					b.Fatal(err)
				}
			}
			cfg, err := pgxpool.ParseConfig(db.URL)
			if err != nil {
				b.Fatal(err)
			}
			counter := &statementCounter{}
			cfg.ConnConfig.Tracer = counter
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer pool.Close()
			agg := rollup.New(pool, rollup.Config{Group: "bench", Topic: "usage.events", Logger: slog.New(slog.DiscardHandler)})
			rng := rand.New(rand.NewPCG(1, 2))
			// One batch before the timer, for every case: the tenants'
			// windows exist, and the last case's thresholds are reached.
			batches := make([][]rollup.Record, b.N+1)
			offset := int64(0)
			for n := range batches {
				base := time.Now().UTC().Add(-2 * time.Hour)
				recs := make([]rollup.Record, perBatch)
				for i := range recs {
					e := events.Event{ID: events.NewID(), Tenant: fmt.Sprint("tenant-", rng.IntN(tenants)), Metric: []string{"api_calls", "tokens"}[i%2],
						Value: rng.Int64N(1000), Time: base.Add(time.Duration(rng.IntN(7200)) * time.Second)}
					recs[i] = rollup.Record{Partition: 0, Offset: offset + int64(i), Key: []byte(e.Tenant), Value: e.AppendJSON(nil), Time: time.Now()}
				}
				offset += perBatch
				batches[n] = recs
			}
			res, err := agg.Apply(ctx, 0, -1, batches[0])
			if err != nil {
				b.Fatal(err)
			}
			from := res.NextOffset
			counter.take()
			b.ResetTimer()
			for _, recs := range batches[1:] {
				res, err := agg.Apply(ctx, 0, from, recs)
				if err != nil {
					b.Fatal(err)
				}
				from = res.NextOffset
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N*perBatch)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(counter.take())/float64(b.N), "statements/batch")
		})
	}
}
