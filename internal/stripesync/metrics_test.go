package stripesync_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

// TestMetrics: what on-call reads on /metrics matches what happened.
// Four pushes are sent (through rate-limit faults), one is rejected and
// dead-lettered, one tenant has no Stripe customer.
func TestMetrics(t *testing.T) {
	f := newFixture(t, 5, stripefake.Config{FaultRate: 0.3, Faults: []string{stripefake.FaultRateLimit}, Seed: 3})
	f.fake.SetReject(func(_, customer string) bool { return customer == "cus_t5" })
	f.db.Exec(t, `INSERT INTO tenants (tenant, plan) VALUES ('nocustomer', 'pro')`)
	for _, tenant := range []string{"t1", "t2", "t3", "t4", "t5", "nocustomer"} {
		f.meter(tenant, "api_calls", 10)
	}
	reg := prometheus.NewRegistry()
	m := stripesync.NewMetrics(reg)
	srv := httptest.NewServer(f.fake)
	t.Cleanup(srv.Close)
	b := stripesync.New(f.db.Pool, stripeapi.NewClient("sk_test_123", srv.URL, 300*time.Millisecond), stripesync.Config{
		RatePerSecond: 1000, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond, MaxAttempts: 20,
		Logger: slog.New(slog.DiscardHandler), Metrics: m,
	})
	ctx := context.Background()
	res, err := b.Sync(ctx)
	if err != nil || res.Sent != 4 || res.Dead != 1 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	if _, _, err := b.CountOpenPushes(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Reconcile(ctx, f.now); err != nil {
		t.Fatal(err)
	}
	value := func(name, label, labelValue string) float64 {
		t.Helper()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range families {
			if mf.GetName() != name {
				continue
			}
			for _, metric := range mf.GetMetric() {
				if label != "" && !hasLabel(metric.GetLabel(), label, labelValue) {
					continue
				}
				switch {
				case metric.GetCounter() != nil:
					return metric.GetCounter().GetValue()
				case metric.GetGauge() != nil:
					return metric.GetGauge().GetValue()
				}
			}
		}
		return 0
	}
	rateLimited := value("metering_biller_stripe_failures_total", "class", "rate_limit")
	tests := []struct {
		name      string
		got, want float64
	}{
		{"pushes sent", value("metering_biller_pushes_total", "outcome", "sent"), 4},
		{"pushes dead-lettered", value("metering_biller_pushes_total", "outcome", "dead_lettered"), 1},
		{"invalid_request failures", value("metering_biller_stripe_failures_total", "class", "invalid_request"), 1},
		{"rate_limit failures = faults injected", rateLimited, float64(f.fake.Faults()[stripefake.FaultRateLimit])},
		{"unmapped", value("metering_biller_unmapped", "", ""), 1},
		{"DLQ depth", value("metering_biller_dlq_depth", "", ""), 1},
		{"drift of drifting rows (t5's 10 never reached Stripe)", value("metering_biller_drift", "status", "drift"), 10},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if rateLimited == 0 {
		t.Error("no rate-limit fault was injected: the test proves nothing about failures by class")
	}
}

func hasLabel(labels []*dto.LabelPair, name, value string) bool {
	for _, lp := range labels {
		if lp.GetName() == name && lp.GetValue() == value {
			return true
		}
	}
	return false
}
