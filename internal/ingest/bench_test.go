package ingest_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// batchBodies returns count request bodies of size events each, all ids distinct.
func batchBodies(count, size int) ([][]byte, [][]events.Event) {
	bodies := make([][]byte, count)
	evs := make([][]events.Event, count)
	ts := time.Now().UTC()
	for i := range bodies {
		var sb strings.Builder
		sb.WriteByte('[')
		for j := range size {
			e := events.Event{ID: events.NewID(), Tenant: fmt.Sprintf("tenant-%d", j%50), Metric: "api_calls", Value: 1,
				Time: ts, Source: "bench", Properties: map[string]string{"region": "eu"}}
			if j > 0 {
				sb.WriteByte(',')
			}
			sb.Write(e.AppendJSON(nil))
			evs[i] = append(evs[i], e)
		}
		sb.WriteByte(']')
		bodies[i] = []byte(sb.String())
	}
	return bodies, evs
}

func (e *env) post(body []byte) int {
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/events", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// BenchmarkIngest measures accepted events/s through HTTP → decode →
// validate → Kafka (acks=all), beside the ceiling of the same batches
// written straight to the broker with the SDK producer.
func BenchmarkIngest(b *testing.B) {
	e := newEnv(b, envOpts{})
	http.DefaultTransport.(*http.Transport).MaxIdleConnsPerHost = 64
	for _, size := range []int{100, 1000} {
		bodies, evs := batchBodies(64, size)
		b.Run(fmt.Sprintf("ceiling-producer/batch-%d", size), func(b *testing.B) {
			var next atomic.Int64
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1) % int64(len(evs))
					if err := e.producer.Emit(context.Background(), evs[i]...); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "events/s")
		})
		b.Run(fmt.Sprintf("http-ingest/batch-%d", size), func(b *testing.B) {
			var next atomic.Int64
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1) % int64(len(bodies))
					if s := e.post(bodies[i]); s != http.StatusAccepted {
						b.Errorf("status %d", s)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkIngestLatency offers a fixed load (200 requests/s of 100
// events: 20k events/s) for 3 seconds and reports request latency
// percentiles. Run it with -benchtime 1x.
func BenchmarkIngestLatency(b *testing.B) {
	e := newEnv(b, envOpts{})
	const rate, size, seconds = 200, 100, 3
	bodies, _ := batchBodies(rate*seconds, size)
	for b.Loop() {
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		tick := time.NewTicker(time.Second / rate)
		for i := range bodies {
			<-tick.C
			wg.Go(func() {
				start := time.Now()
				if s := e.post(bodies[i]); s != http.StatusAccepted {
					b.Errorf("status %d", s)
				}
				d := time.Since(start)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			})
		}
		tick.Stop()
		wg.Wait()
		slices.Sort(lat)
		pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
		b.ReportMetric(pct(0.50), "p50-ms")
		b.ReportMetric(pct(0.99), "p99-ms")
		b.ReportMetric(rate*size, "offered-events/s")
	}
}

// BenchmarkUsageQuery measures GET /v1/usage for a month of hourly windows
// (744 rows) over HTTP, and reports latency percentiles.
func BenchmarkUsageQuery(b *testing.B) {
	e := newEnv(b, envOpts{})
	month := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	e.db.Exec(b, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events)
		SELECT 'tenant-' || t, 'api_calls', 'hour', $1::timestamptz + make_interval(hours => h), h, 1
		FROM generate_series(0, 743) h, generate_series(0, 99) t`, month)
	url := e.srv.URL + "/v1/usage?tenant=tenant-7&metric=api_calls&window=hour&from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z"
	readLatency(b, url, func(body []byte) bool { return bytes.Contains(body, []byte(`"total":276396`)) })
}

// readLatency times GET url with the admin key b.N times, fails b on an
// answer that is not 200 or that ok refuses, and reports the latency's
// p50 and p99.
func readLatency(b *testing.B, url string, ok func(body []byte) bool) {
	var lat []time.Duration
	for b.Loop() {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+adminKey)
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(start))
		if resp.StatusCode != 200 || !ok(body) {
			b.Fatalf("%d %s", resp.StatusCode, body[:min(len(body), 300)])
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkUsageQueryGrouped measures GET /v1/usage of a meter kept in
// 100 groups (10 models by 10 regions) over a month of hourly windows
// (74,400 windows of the tenant, on pages shared with four other
// tenants'), regrouped by model: 10 groups of 744 windows and their
// totals, over HTTP. It reports latency percentiles: first with the
// month's days not packed (read from usage_windows, as the last three
// days always are), then packed (usagedata.PackHours, as the
// aggregator's hour packer leaves a past month).
func BenchmarkUsageQueryGrouped(b *testing.B) {
	e := newEnv(b, envOpts{})
	ctx := context.Background()
	if _, _, err := accounts.PutMeter(ctx, e.db.Pool, accounts.Meter{Name: "tokens_by_model", Metric: "tokens", Aggregation: "sum", GroupBy: []string{"model", "region"}}); err != nil {
		b.Fatal(err)
	}
	month := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	e.db.Exec(b, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT 'tenant-' || t, 'tokens_by_model', '["model-' || m || '","region-' || r || '"]', 'hour', $1::timestamptz + make_interval(hours => h), h, 1
		FROM generate_series(0, 743) h, generate_series(0, 9) m, generate_series(0, 9) r, generate_series(0, 4) t`, month)
	e.db.Exec(b, `ANALYZE usage_windows`)
	url := e.srv.URL + "/v1/usage?tenant=tenant-3&meter=tokens_by_model&group_by=model&window=hour&from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z"
	read := func(b *testing.B) {
		// 100 groups of sum(0..743) = 276396 each.
		readLatency(b, url, func(body []byte) bool {
			return bytes.Contains(body, []byte(`"total":27639600`)) &&
				bytes.Contains(body, []byte(`"totals":[{"group":{"model":"model-0"},"value":2763960,"events":7440}`))
		})
	}
	b.Run("unpacked", read)
	b.Run("packed", func(b *testing.B) {
		if _, err := usagedata.PackHours(ctx, e.db.Pool, 1000); err != nil {
			b.Fatal(err)
		}
		var days int
		if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_packed_days WHERE tenant = 'tenant-3'`).Scan(&days); err != nil || days != 31 {
			b.Fatalf("%d days packed, want 31 (%v)", days, err)
		}
		e.db.Exec(b, `ANALYZE usage_hour_packs`)
		read(b)
	})
}
