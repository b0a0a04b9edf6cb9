package periodclose_test

import (
	"context"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// benchTenants is how many tenants have usage in each benchmarked month.
const benchTenants = 5000

// benchDB holds benchTenants tenants with two meters each (the implicit
// one and a defined one with 3 groups) in October and November, day and
// hour windows besides the month ones, and every partition caught up.
func benchDB(b *testing.B) *pgtest.DB {
	b.Helper()
	db := pgtest.New(b)
	db.Exec(b, `INSERT INTO meters (name, metric, aggregation, group_by, version) VALUES ('tokens_by_model', 'tokens', 'sum', '{model}', 1)`)
	for _, m := range []time.Time{oct, nov} {
		db.Exec(b, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
			SELECT 't' || t, 'api_calls', '', g, s, t, 1
			FROM generate_series(1, $2::int) t,
				(VALUES ('month', $1::timestamptz)) AS w(g, s)
			UNION ALL
			SELECT 't' || t, 'tokens_by_model', '["m' || k || '"]', 'month', $1, t * k, 1
			FROM generate_series(1, $2::int) t, generate_series(1, 3) k
			UNION ALL
			SELECT 't' || t, 'api_calls', '', g, s, t, 1
			FROM generate_series(1, $2::int) t,
				LATERAL (SELECT 'day', d FROM generate_series($1::timestamptz, $1::timestamptz + interval '29 days', interval '1 day') d
					UNION ALL SELECT 'hour', h FROM generate_series($1::timestamptz, $1::timestamptz + interval '47 hours', interval '1 hour') h) AS w(g, s)`,
			m, benchTenants)
	}
	db.Exec(b, `ANALYZE usage_windows`)
	ctx := context.Background()
	for p := range 4 {
		if _, err := usagedata.AdvanceOffsetTo(ctx, db.Pool, group, topic, p, -1, 10, now); err != nil {
			b.Fatal(err)
		}
	}
	return db
}

// BenchmarkClose: the first sync after two months become complete
// announces every tenant's two months (per op: 2 x benchTenants periods);
// a later sync finds nothing to do (it reads the months' windows by
// their start and skips the announced ones).
func BenchmarkClose(b *testing.B) {
	ctx := context.Background()
	b.Run("announce", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			db := benchDB(b)
			c := newCloser(db)
			b.StartTimer()
			res, err := c.Close(ctx)
			if err != nil || res.Closed != 2*benchTenants {
				b.Fatalf("Close = %+v, %v", res, err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*2*benchTenants), "µs/period")
	})
	b.Run("nothing-to-do", func(b *testing.B) {
		db := benchDB(b)
		c := newCloser(db)
		if _, err := c.Close(ctx); err != nil {
			b.Fatal(err)
		}
		// As autovacuum leaves them: index-only scans skip the heap.
		db.Exec(b, `VACUUM ANALYZE usage_windows, billing_period_events`)
		for b.Loop() {
			res, err := c.Close(ctx)
			if err != nil || res.Closed != 0 {
				b.Fatalf("Close = %+v, %v", res, err)
			}
		}
	})
}
