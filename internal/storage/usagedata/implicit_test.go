package usagedata_test

import (
	"context"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestImplicitMeterCounted: a metric's name is taken when any tenant's
// implicit meter of it (the empty group key) has a window and no meter of
// that name is defined; windows of other meters, of grouped meters and of
// other names do not take it, and defining the meter releases it.
func TestImplicitMeterCounted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	counted := func(name string) bool {
		t.Helper()
		got, err := usagedata.ImplicitMeterCounted(ctx, db.Pool, name)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if counted("tokens") {
		t.Fatal("no windows at all, yet tokens is counted")
	}
	start := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	var adds usagedata.MeterAdds
	add := func(tenant, meterName, group string) {
		adds.Append(tenant, meterName, group, "hour", start, meter.Contribution{Aggregation: meter.Sum, Value: 1, Time: start, ID: "e"}, 1)
	}
	// Tenants on both sides of the one that counted tokens, so the walk
	// over tenants has to step past some.
	for _, tenant := range []string{"a", "b", "c", "d", "e"} {
		add(tenant, "api_calls", "")
	}
	add("c", "tokens", "")
	add("a", "by_model", `["gpt-4"]`)
	add("e", "grouped_only", `[null]`)
	if err := usagedata.AddMeterWindows(ctx, db.Pool, adds); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		want bool
	}{
		{"tokens", true},
		{"api_calls", true},
		{"by_model", false},     // a grouped meter's windows, not a metric's
		{"grouped_only", false}, // likewise
		{"token", false},
		{"tokens ", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := counted(tt.name); got != tt.want {
			t.Errorf("ImplicitMeterCounted(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
	// A defined meter of that name owns the windows: the name is no
	// longer a bare metric's.
	if _, _, err := accounts.PutMeter(ctx, db.Pool, accounts.Meter{Name: "tokens", Metric: "tokens", Aggregation: accounts.AggregationSum}); err != nil {
		t.Fatal(err)
	}
	if counted("tokens") {
		t.Error("tokens is defined as a meter, yet reported as a bare metric")
	}
	if !counted("api_calls") {
		t.Error("defining tokens changed api_calls")
	}
}
