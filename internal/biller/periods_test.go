package biller_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// TestSyncClosesACompletePeriodOnce: the biller's sync loop announces a
// tenant's complete month on billing.events once, with the exact usage of
// every meter and group, however many syncs and restarts follow; the
// reconciliation says the month is complete.
func TestSyncClosesACompletePeriodOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	kc := kafkatest.Start(t)
	fake := stripefake.New(stripefake.Config{})
	srv := httptest.NewServer(fake)
	t.Cleanup(func() { fake.Close(); srv.Close() })
	fake.EnsureMeter("api_calls")
	month := windows.Month.Start(time.Now()).AddDate(0, -2, 0)
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	db.Exec(t, `INSERT INTO plan_quotas (plan, metric, period, stripe_event_name) VALUES ('pro', 'api_calls', 'month', 'api_calls')`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('acme', 'pro', 'cus_acme')`)
	db.Exec(t, `INSERT INTO meters (name, metric, aggregation, group_by, version) VALUES ('tokens_by_model', 'tokens', 'sum', '{model}', 1)`)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'api_calls', '', 'month', $1, 1234567, 3),
		('acme', 'tokens_by_model', '["gpt-4"]', 'month', $1, 7, 1),
		('acme', 'tokens_by_model', '["o1"]', 'month', $1, 11, 2)`, month)
	db.Exec(t, `INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, watermark) VALUES
		('metering-aggregator', 'usage.events', 0, 10, now()), ('metering-aggregator', 'usage.events', 1, 0, now())`)
	cfg, _, err := config.LoadBiller("biller", []string{"-http-addr", "127.0.0.1:0", "-sync-interval", "50ms"}, func(k string) string {
		return map[string]string{"DATABASE_URL": db.URL, "KAFKA_BROKERS": kc.Addr(), "STRIPE_API_KEY": "sk_test_periods",
			"STRIPE_API_BASE": srv.URL, "STRIPE_RATE_LIMIT": "1000"}[k]
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	run := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		ready := make(chan net.Addr, 1)
		go func() { done <- biller.Run(ctx, cfg, slog.New(slog.DiscardHandler), func(a net.Addr) { ready <- a }) }()
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("Run: %v", err)
		}
		return func() { cancel(); <-done }
	}
	published := func() []billingevents.Event {
		var out []billingevents.Event
		for _, m := range kafkatest.ReadAll(t, kc.Brokers(), topics.BillingEvents) {
			ev, err := billingevents.Decode(m.Value)
			if err != nil {
				t.Fatal(err)
			}
			var id string
			for _, h := range m.Headers {
				if h.Key == billingevents.HeaderEventID {
					id = string(h.Value)
				}
			}
			if string(m.Key) != ev.Tenant || id != ev.ID {
				t.Errorf("message key %q, event-id %q, event %+v", m.Key, id, ev)
			}
			out = append(out, ev)
		}
		return out
	}

	stop := run()
	deadline := time.Now().Add(30 * time.Second)
	for len(published()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no period.closed on billing.events after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // several more syncs
	stop()
	stop = run() // a restart syncs again
	time.Sleep(300 * time.Millisecond)
	stop()

	evs := published()
	if len(evs) != 1 {
		t.Fatalf("%d events on billing.events, want 1: %+v", len(evs), evs)
	}
	data, ok := evs[0].Data.(billingevents.PeriodClosed)
	want := []billingevents.MeterUsage{
		{Meter: "api_calls", Metric: "api_calls", Aggregation: "sum", Value: big.NewInt(1234567)},
		{Meter: "tokens_by_model", Metric: "tokens", Aggregation: "sum", Group: `["gpt-4"]`, Value: big.NewInt(7)},
		{Meter: "tokens_by_model", Metric: "tokens", Aggregation: "sum", Group: `["o1"]`, Value: big.NewInt(11)},
	}
	if !ok || evs[0].Tenant != "acme" || !data.PeriodStart.Equal(month) || !data.PeriodEnd.Equal(windows.Month.End(month)) ||
		data.AllowedLateness != "1h0m0s" || !reflect.DeepEqual(data.Usage, want) {
		t.Errorf("event %+v\nwant usage %+v", evs[0], want)
	}
	var marked int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM billing_period_events WHERE event_id = $1`, evs[0].ID).Scan(&marked); err != nil || marked != 1 {
		t.Errorf("billing_period_events rows of the event: %d, %v", marked, err)
	}

	var out bytes.Buffer
	if err := biller.ReconcileCommand(context.Background(), cfg, slog.New(slog.DiscardHandler), []string{"--period", month.Format("2006-01")}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "period "+month.Format("2006-01")+" of acme: complete\n") {
		t.Errorf("reconcile:\n%s", out.String())
	}
}
