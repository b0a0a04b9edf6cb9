package rollup_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/billingdata"
)

// TestApplyMovesTheWatermark: each batch's transaction moves its
// partition's watermark to the greatest record timestamp of the batch,
// never past the clock and never back; a fenced batch moves nothing.
func TestApplyMovesTheWatermark(t *testing.T) {
	a, db := newAgg(t)
	ctx := context.Background()
	watermark := func() string {
		t.Helper()
		ws, err := billingdata.Watermarks(ctx, db.Pool, "test", "usage.events")
		if err != nil || len(ws) != 1 {
			t.Fatalf("watermarks %+v, %v", ws, err)
		}
		if ws[0].Watermark == nil {
			return "none"
		}
		return ws[0].Watermark.UTC().Format(time.RFC3339)
	}
	at := func(recs []rollup.Record, times ...time.Time) []rollup.Record {
		for i := range recs {
			recs[i].Time = times[i]
		}
		return recs
	}
	steps := []struct {
		name  string
		from  int64
		recs  []rollup.Record
		want  string
		fence bool
	}{
		{"the greatest timestamp, not the last", -1, at(batch(0, ev("a", "acme", "api_calls", 1, now), ev("b", "acme", "api_calls", 1, now)),
			now.Add(-time.Hour), now.Add(-2*time.Hour)), "2026-11-21T18:00:00Z", false},
		{"an older batch does not move it back", 2, at(batch(2, ev("c", "acme", "api_calls", 1, now)), now.Add(-3*time.Hour)), "2026-11-21T18:00:00Z", false},
		{"a future timestamp counts as now", 3, at(batch(3, ev("d", "acme", "api_calls", 1, now)), now.Add(time.Hour)), "2026-11-21T19:00:00Z", false},
		{"a fenced batch moves nothing", 0, at(batch(0, ev("e", "acme", "api_calls", 1, now)), now.Add(time.Hour)), "2026-11-21T19:00:00Z", true},
	}
	for _, s := range steps {
		_, err := a.Apply(ctx, 0, s.from, s.recs)
		if s.fence != errors.Is(err, rollup.ErrFenced) || (!s.fence && err != nil) {
			t.Fatalf("%s: Apply = %v", s.name, err)
		}
		if got := watermark(); got != s.want {
			t.Errorf("%s: watermark %s, want %s", s.name, got, s.want)
		}
	}
	// Caught up at the log end (offset 4): the watermark is the read's time.
	if moved, err := a.CaughtUp(ctx, 0, 4, now.Add(30*time.Minute), false); err != nil || !moved {
		t.Fatalf("CaughtUp = %v, %v", moved, err)
	}
	if got := watermark(); got != "2026-11-21T19:30:00Z" {
		t.Errorf("caught up: watermark %s", got)
	}
}
