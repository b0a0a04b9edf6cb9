package meterset_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/meterset"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

func put(t *testing.T, db *pgtest.DB, m accounts.Meter) {
	t.Helper()
	if _, _, err := accounts.PutMeter(context.Background(), db.Pool, m); err != nil {
		t.Fatal(err)
	}
}

// TestCurrentSeesACommittedChange: a change committed before Current runs
// is in the Set it answers, in a transaction as on the pool; an
// uncommitted one is not.
func TestCurrentSeesACommittedChange(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	l := meterset.NewLoader()
	s, err := l.Current(ctx, db.Pool)
	if err != nil || s.Len() != 0 {
		t.Fatalf("empty table: %v, %d meters", err, s.Len())
	}
	put(t, db, accounts.Meter{Name: "by_model", Metric: "tokens", Aggregation: "sum", GroupBy: []string{"model"}})
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	s, err = l.Current(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	if ms := s.ForMetric("tokens"); len(ms) != 1 || ms[0].Name != "by_model" || ms[0].GroupBy[0] != "model" {
		t.Fatalf("after a put: %+v", ms)
	}
	// A change in a transaction not committed yet is not seen elsewhere.
	other, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := accounts.PutMeter(ctx, other, accounts.Meter{Name: "by_model", Metric: "tokens", Aggregation: "max"}); err != nil {
		t.Fatal(err)
	}
	if s, err = l.Current(ctx, db.Pool); err != nil || s.ForMetric("tokens")[0].Aggregation != "sum" {
		t.Fatalf("an uncommitted change was seen: %v", err)
	}
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if s, err = l.Current(ctx, db.Pool); err != nil || s.ForMetric("tokens")[0].Aggregation != "max" {
		t.Fatalf("a committed change was not seen: %v", err)
	}
}

// TestListenReadsChanges: with Listen running, a change is read without
// any call to Current (so the next batch finds it cached).
func TestListenReadsChanges(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	l := meterset.NewLoader()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Listen(ctx, db.Pool, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	put(t, db, accounts.Meter{Name: "peak", Metric: "bytes", Aggregation: "max"})
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Poll what the loader holds, without reading through Current.
		if s := l.Cached(); s != nil && s.Len() == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the change was not read within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestShadows(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	put(t, db, accounts.Meter{Name: "calls", Metric: "calls", Aggregation: "sum"})
	put(t, db, accounts.Meter{Name: "gpu", Metric: "tokens", Aggregation: "sum"})
	put(t, db, accounts.Meter{Name: "bytes", Metric: "bytes", Aggregation: "max"})
	s, err := meterset.NewLoader().Current(context.Background(), db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		metric  string
		shadows bool
	}{
		{"calls", false},  // the implicit meter itself
		{"gpu", true},     // another metric's meter
		{"bytes", true},   // its own metric, but not the implicit meter
		{"tokens", false}, // no meter of that name
	} {
		if _, got := s.Shadows(tc.metric); got != tc.shadows {
			t.Errorf("Shadows(%q) = %v, want %v", tc.metric, got, tc.shadows)
		}
	}
	// The implicit meter's definition is not counted a second time.
	if ms := s.ForMetric("calls"); len(ms) != 0 {
		t.Errorf("ForMetric(calls) = %+v, want none", ms)
	}
}
