package aggregator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/aggregator"
	"github.com/usagemeter/metering/internal/anomaly"
	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/ratelimit"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/anomalydata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
)

// seedSeries writes hour windows of tenant's meter: value at each of the
// baseline hours of h (a little noise), at h itself observed, and a day
// window old enough that the series is mature.
func seedSeries(t *testing.T, db *pgtest.DB, tenant, meter string, h time.Time, base, observed int64) {
	t.Helper()
	c := anomaly.DefaultConfig()
	for i, b := range c.BaselineHours(h) {
		db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
			VALUES ($1, $2, '', 'hour', $3, $4, 1) ON CONFLICT DO NOTHING`, tenant, meter, b, base+int64(i%3))
	}
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		VALUES ($1, $2, '', 'hour', $3, $4, 1), ($1, $2, '', 'day', $5, 1, 1) ON CONFLICT DO NOTHING`,
		tenant, meter, h, observed, c.BaselineHours(h)[0].Truncate(24*time.Hour))
}

func anomalyMessages(t *testing.T, db *pgtest.DB) []string {
	t.Helper()
	var out []string
	for _, v := range db.Outbox(t, topics.UsageAnomalies) {
		out = append(out, string(v))
	}
	return out
}

// TestAnomalyHourCompleteNeedsEveryPartition: an hour is complete only
// when every partition Kafka lists is stored with a watermark past it; at
// start-up, one partition applied while another has stored nothing yet
// completes no hour (its events may be in the other), and a failed listing
// is an error, not a complete hour.
func TestAnomalyHourCompleteNeedsEveryPartition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	h := time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)
	watermark := h.Add(time.Hour + 10*time.Minute)
	db.Exec(t, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, watermark) VALUES ('g', $1, 0, 10, $2)`,
		topics.UsageEvents, watermark)
	listing := func(parts []int, err error) func(context.Context) ([]int, error) {
		return func(context.Context) ([]int, error) { return parts, err }
	}
	tests := []struct {
		name       string
		partitions func(context.Context) ([]int, error)
		complete   bool
		fails      bool
	}{
		{"the stored partitions alone", nil, true, false},
		{"Kafka lists only the stored partition", listing([]int{0}, nil), true, false},
		{"Kafka lists a partition nothing stored yet", listing([]int{0, 1}, nil), false, false},
		{"Kafka cannot be asked", listing(nil, fmt.Errorf("no broker")), false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			j := &aggregator.AnomalyJudge{Pool: db.Pool, Detector: anomaly.DefaultConfig(), Group: "g", Topic: topics.UsageEvents,
				Lateness: 10 * time.Minute, Partitions: tt.partitions, Now: func() time.Time { return watermark.Add(time.Minute) }}
			got, ok, err := j.Complete(ctx)
			if (err != nil) != tt.fails || ok != tt.complete {
				t.Fatalf("Complete = %s, %v, %v", got, ok, err)
			}
			if ok && !got.Equal(h) {
				t.Fatalf("latest complete hour %s, want %s", got, h)
			}
		})
	}
}

// TestAnomalyJudgeFlagsOnce: two leaders judging the same complete hour
// flag a spike once (one row, one usage.anomalies message with the
// contract's payload); a normal series and a new one are not flagged; a
// partial hour is not judged; the next hour extends the episode while it
// stays high and ends it when it returns to normal, sending nothing more.
func TestAnomalyJudgeFlagsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	h := time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC) // a Monday
	seedSeries(t, db, "acme", "api_calls", h, 1000, 9000)
	seedSeries(t, db, "globex", "api_calls", h, 1000, 1010)
	// A new tenant: no history, a big first hour.
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		VALUES ('newco', 'api_calls', '', 'hour', $1, 50000, 1), ('newco', 'api_calls', '', 'day', $2, 50000, 1)`, h, h.Truncate(24*time.Hour))
	watermark := h.Add(time.Hour + 10*time.Minute)
	db.Exec(t, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, watermark) VALUES
		('g', $1, 0, 10, $2), ('g', $1, 1, 10, $2)`, topics.UsageEvents, watermark)
	now := watermark.Add(30 * time.Second)
	judge := func() *aggregator.AnomalyJudge {
		return &aggregator.AnomalyJudge{Pool: db.Pool, Detector: anomaly.DefaultConfig(), Group: "g", Topic: topics.UsageEvents,
			Lateness: 10 * time.Minute, Now: func() time.Time { return now }}
	}
	var wg sync.WaitGroup
	judged := make([]int, 2)
	for i := range judged {
		wg.Go(func() {
			n, err := judge().Round(ctx)
			if err != nil {
				t.Error(err)
			}
			judged[i] = n
		})
	}
	wg.Wait()
	if judged[0]+judged[1] != 1 {
		t.Fatalf("the two leaders judged %v hours, want 1 in all", judged)
	}
	msgs := anomalyMessages(t, db)
	id := anomaly.EpisodeID(anomaly.Series{Tenant: "acme", Meter: "api_calls"}, anomaly.Spike, h)
	want := fmt.Sprintf(`{"id":%q,"type":"anomaly.spike","tenant":"acme","meter":"api_calls","hour":"2026-11-23T14:00:00Z","observed":"9000","expected":"1001","score":"79.91","sensitivity":"4","detected_at":"2026-11-23T15:10:30Z"}`, id)
	if len(msgs) != 1 || msgs[0] != want {
		t.Fatalf("usage.anomalies messages:\n%q\nwant\n%q", msgs, want)
	}
	// The next hour is not complete yet: nothing more is judged.
	if n, err := judge().Round(ctx); err != nil || n != 0 {
		t.Fatalf("round before the next hour is complete: %d, %v", n, err)
	}
	// The next hour, still high: the episode goes on.
	next := h.Add(time.Hour)
	seedSeries(t, db, "acme", "api_calls", next, 1000, 8000)
	seedSeries(t, db, "globex", "api_calls", next, 1000, 990)
	db.Exec(t, `UPDATE consumer_offsets SET watermark = watermark + interval '1 hour'`)
	now = now.Add(time.Hour)
	if n, err := judge().Round(ctx); err != nil || n != 1 {
		t.Fatalf("round of the next hour: %d, %v", n, err)
	}
	list, err := anomalydata.List(ctx, db.Pool, anomalydata.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != id || !list[0].LastHour.Equal(next) || list[0].EndedAt != nil {
		t.Fatalf("after a second high hour: %+v", list)
	}
	// Back to normal: the episode ends at the end of its last hour.
	third := next.Add(time.Hour)
	seedSeries(t, db, "acme", "api_calls", third, 1000, 1000)
	seedSeries(t, db, "globex", "api_calls", third, 1000, 1000)
	db.Exec(t, `UPDATE consumer_offsets SET watermark = watermark + interval '1 hour'`)
	now = now.Add(time.Hour)
	if n, err := judge().Round(ctx); err != nil || n != 1 {
		t.Fatalf("round of the third hour: %d, %v", n, err)
	}
	if list, err = anomalydata.List(ctx, db.Pool, anomalydata.Filter{}); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].EndedAt == nil || !list[0].EndedAt.Equal(third) {
		t.Fatalf("after a normal hour: %+v", list)
	}
	if msgs := anomalyMessages(t, db); len(msgs) != 1 {
		t.Fatalf("%d usage.anomalies messages, want still 1", len(msgs))
	}
}

// TestAnomalyEndToEnd: events go through the broker and the aggregator
// into hour windows; the aggregator's anomalies leader flags the spike
// hour once, the relay publishes it to usage.anomalies keyed by tenant,
// and GET /v1/anomalies lists it.
func TestAnomalyEndToEnd(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := context.Background()
	now := time.Now().UTC()
	lateness := time.Second
	h := now.Add(-lateness).Truncate(time.Hour).Add(-time.Hour) // the latest complete hour
	if now.Sub(h) > 2*time.Hour-5*time.Second {
		// The hour turns during the test: judge the one before.
		h = h.Add(time.Hour)
		time.Sleep(10 * time.Second)
	}
	c := anomaly.DefaultConfig()
	var evs []events.Event
	for _, tenant := range []string{"acme", "globex"} {
		for i, b := range c.BaselineHours(h) {
			evs = append(evs, events.Event{ID: fmt.Sprintf("%s-b%d", tenant, i), Tenant: tenant, Metric: "api_calls", Value: int64(400 + i%5), Time: b.Add(time.Minute)})
		}
		v := int64(402)
		if tenant == "acme" {
			v = 6000
		}
		evs = append(evs, events.Event{ID: tenant + "-h", Tenant: tenant, Metric: "api_calls", Value: v, Time: h.Add(30 * time.Minute)})
	}
	if err := s.producer.Emit(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	// Every event is in the log before the aggregator starts, so the first
	// watermarks cover them all.
	cfg := s.config("-anomaly-lateness", lateness.String(), "-anomaly-interval", "100ms")
	s.start(cfg)
	s.waitConsumed(cfg.ConsumerGroup)
	s.waitTopic(topics.UsageAnomalies, 1)
	time.Sleep(300 * time.Millisecond) // a few more rounds: still one message
	msgs := s.waitTopic(topics.UsageAnomalies, 1)
	if len(msgs) != 1 {
		t.Fatalf("%d usage.anomalies messages, want 1", len(msgs))
	}
	var p anomaly.Payload
	if err := json.Unmarshal(msgs[0].Value, &p); err != nil {
		t.Fatal(err)
	}
	id := anomaly.EpisodeID(anomaly.Series{Tenant: "acme", Meter: "api_calls"}, anomaly.Spike, h)
	if p.ID != id || p.Type != anomaly.TypeSpike || p.Tenant != "acme" || p.Meter != "api_calls" || p.Hour != h.Format(time.RFC3339) ||
		p.Observed != "6000" || p.Expected != "401.5" || p.Sensitivity != "4" || string(msgs[0].Key) != "acme" || header(msgs[0], "anomaly-id") != id {
		t.Fatalf("message %s key %s", msgs[0].Value, msgs[0].Key)
	}
	// GET /v1/anomalies on an ingest API over the same database.
	st := accounts.New(s.db.Pool)
	api := ingest.New(ingest.Options{Store: st, Auth: auth.New(st, "adm_anomaly_test_key_0123456789abcdef"), DB: s.db.Pool,
		KeyLimiter: ratelimit.New(1e6, 1e6), IPLimiter: ratelimit.New(1e6, 1e6), Logger: slog.New(slog.DiscardHandler)})
	srv := httptest.NewServer(api.Handler(http.NewServeMux()))
	defer srv.Close()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/anomalies?tenant=acme", nil)
	req.Header.Set("Authorization", "Bearer adm_anomaly_test_key_0123456789abcdef")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || strings.Count(string(body), `"id":`) != 1 || !strings.Contains(string(body), `"id":"`+id+`"`) || !strings.Contains(string(body), `"score":"`+p.Score+`"`) {
		t.Fatalf("GET /v1/anomalies: %d %s", resp.StatusCode, body)
	}
}
