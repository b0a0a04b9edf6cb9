package aggregator_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/aggregator"
	"github.com/usagemeter/metering/internal/anomaly"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
)

// BenchmarkAnomalyRound judges one complete hour of BENCH_TENANTS tenants
// (default 10,000) with one meter each, every baseline hour present and
// one tenant in a hundred spiking: the hour's read, the judgement, the
// episodes and their outbox rows, in the loop's one transaction. Reports
// the hour's wall time and the time per series.
func BenchmarkAnomalyRound(b *testing.B) {
	tenants := 10000
	if v, err := strconv.Atoi(os.Getenv("BENCH_TENANTS")); err == nil && v > 0 {
		tenants = v
	}
	ctx := context.Background()
	db := pgtest.New(b)
	h := time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)
	c := anomaly.DefaultConfig()
	hours := append([]time.Time{h}, c.BaselineHours(h)...)
	db.Exec(b, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT 'tenant-' || i, 'api_calls', '', 'hour', s, CASE WHEN s = $2 AND i % 100 = 0 THEN 50000 ELSE 1000 + (i * 7 + extract(epoch FROM s)::bigint / 3600) % 50 END, 1
		FROM generate_series(1, $1) AS i, unnest($3::timestamptz[]) AS s`, tenants, h, hours)
	db.Exec(b, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT 'tenant-' || i, 'api_calls', '', 'day', $2, 1, 1 FROM generate_series(1, $1) AS i`, tenants, hours[1].Truncate(24*time.Hour))
	db.Exec(b, `ANALYZE usage_windows`)
	wm := h.Add(2 * time.Hour)
	db.Exec(b, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, watermark) VALUES ('g', $1, 0, 1, $2)`, topics.UsageEvents, wm)
	j := &aggregator.AnomalyJudge{Pool: db.Pool, Detector: c, Group: "g", Topic: topics.UsageEvents, Lateness: 10 * time.Minute,
		Now: func() time.Time { return wm }}
	var flagged int
	for b.Loop() {
		b.StopTimer()
		db.Exec(b, `DELETE FROM anomaly_progress`)
		db.Exec(b, `DELETE FROM usage_anomalies`)
		db.Exec(b, `DELETE FROM outbox`)
		db.Exec(b, `INSERT INTO anomaly_progress (judged_through) VALUES ($1)`, h.Add(-time.Hour))
		b.StartTimer()
		n, err := j.Round(ctx)
		if err != nil || n != 1 {
			b.Fatalf("round: %d hours, %v", n, err)
		}
		b.StopTimer()
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_anomalies`).Scan(&flagged); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	if flagged != tenants/100 {
		b.Fatalf("%d flagged, want %d", flagged, tenants/100)
	}
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(per/1e6, "ms/hour")
	b.ReportMetric(per/float64(tenants)/1e3, "µs/series")
}
