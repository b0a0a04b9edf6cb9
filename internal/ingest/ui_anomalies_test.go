package ingest_test

import (
	"context"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/usagemeter/metering/internal/anomaly"
	"github.com/usagemeter/metering/internal/storage/anomalydata"
)

// TestUsagePageShowsAnomalies: the usage page lists the tenant's anomaly
// episodes as GET /v1/anomalies answers them, newest first: hour, meter,
// kind, observed, expected and the end ("ongoing" while open), a meter
// name shown as text; none of another tenant's.
func TestUsagePageShowsAnomalies(t *testing.T) {
	now := time.Now().UTC()
	e := newUIEnv(t, now)
	_, key := e.createKey(`{"tenant":"acme","scope":"read"}`)
	ctx := context.Background()
	h := time.Date(2026, 11, 21, 14, 0, 0, 0, time.UTC)
	sens, _ := anomaly.ParseSensitivity("4")
	add := func(tenant, meter string, dir anomaly.Direction, hour time.Time, observed int64, expected *big.Rat, ended time.Time) {
		s := anomaly.Series{Tenant: tenant, Meter: meter}
		a := anomaly.Anomaly{
			Episode:  anomaly.Episode{ID: anomaly.EpisodeID(s, dir, hour), Series: s, Direction: dir, Hour: hour, LastHour: hour},
			Observed: big.NewInt(observed), Expected: expected, Score: big.NewRat(50, 1), Sensitivity: sens, DetectedAt: hour.Add(time.Hour),
		}
		if _, err := anomalydata.Insert(ctx, e.db.Pool, a); err != nil {
			t.Fatal(err)
		}
		if !ended.IsZero() {
			if err := anomalydata.End(ctx, e.db.Pool, anomaly.Ended{ID: a.ID, EndedAt: ended}); err != nil {
				t.Fatal(err)
			}
		}
	}
	add("acme", "api_calls", anomaly.Spike, h, 12040, big.NewRat(2361, 2), time.Time{})
	add("acme", "tokens", anomaly.Drop, h.Add(-48*time.Hour), 3, big.NewRat(900, 1), h.Add(-46*time.Hour))
	add("globex", "api_calls", anomaly.Spike, h, 1, big.NewRat(1, 1), time.Time{})

	page := openPage(t, e, key)
	rows, err := chromedp.Run(page, chromedp.Evaluate[[][]string](
		`[...document.querySelectorAll('[data-testid="anomaly"]')].map(tr => [...tr.cells].map(td => td.textContent))`))
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"2026-11-21 14:00", "api_calls", "spike", "12040", "1180.5", "ongoing"},
		{"2026-11-19 14:00", "tokens", "drop", "3", "900", "2026-11-19 16:00"},
	}
	if fmt.Sprint(rows) != fmt.Sprint(want) {
		t.Errorf("anomalies on the page: %v, want %v", rows, want)
	}
	if v, err := chromedp.Run(page, chromedp.Evaluate[[]string](`window.cspViolations`)); err != nil || len(v) > 0 {
		t.Errorf("CSP violations: %v (%v)", v, err)
	}
}
