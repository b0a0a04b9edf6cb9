package stripesync_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripemock"
	"github.com/usagemeter/metering/internal/windows"
)

// mockMeters is the real client to stripe-mock, whose fixture meters do
// not carry the grouped event names: it lists them as active, and records
// the event names and identifiers the biller sends.
type mockMeters struct {
	*stripeapi.Client
	mu   sync.Mutex
	sent map[string]string // identifier: event name
}

func (m *mockMeters) Meters(context.Context) (map[string]string, error) {
	return map[string]string{"tokens": "mtr_123", "tokens_gpt-4": "mtr_123", "tokens_o1": "mtr_123"}, nil
}

func (m *mockMeters) SendMeterEvent(ctx context.Context, eventName, identifier, customer, value string, ts time.Time) error {
	err := m.Client.SendMeterEvent(ctx, eventName, identifier, customer, value, ts)
	if err == nil {
		m.mu.Lock()
		m.sent[identifier] = eventName
		m.mu.Unlock()
	}
	return err
}

// TestGroupedPushesMatchStripesShapes sends grouped pushes and reads
// their summaries through stripe-mock, which refuses any request whose
// shape is not Stripe's.
func TestGroupedPushesMatchStripesShapes(t *testing.T) {
	base := stripemock.Start(t)
	db := pgtest.New(t)
	now := time.Now().UTC()
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	db.Exec(t, `INSERT INTO meters (name, metric, aggregation, group_by, version) VALUES ('tokens_by_model', 'tokens', 'sum', '{model}', 1)`)
	db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name, meter, group_filter, per_group) VALUES
		('pro', 'tokens', NULL, 'month', 'tokens', NULL, '{}', false),
		('pro', 'tokens', NULL, 'month', 'tokens_{model}', 'tokens_by_model', '{}', false)`)
	db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('t1', 'pro', 'cus_123')`)
	db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('t1', 'tokens', '', 'month', $1, 90, 3), ('t1', 'tokens_by_model', '["gpt-4"]', 'month', $1, 60, 2), ('t1', 'tokens_by_model', '["o1"]', 'month', $1, 30, 1)`,
		windows.Month.Start(now))
	st := &mockMeters{Client: stripeapi.NewClient("sk_test_123", base, 10*time.Second), sent: map[string]string{}}
	b := stripesync.New(db.Pool, st, stripesync.Config{MaxAttempts: 1})
	ctx := context.Background()
	res, err := b.Sync(ctx)
	if err != nil || res.Sent != 3 || res.Dead != 0 {
		t.Fatalf("sync through stripe-mock: %+v, %v", res, err)
	}
	period := windows.Month.Start(now)
	want := map[string]string{
		stripesync.Identifier("t1", "tokens", period, "90", 0):                            "tokens",
		stripesync.GroupIdentifier("t1", "tokens_by_model", `["gpt-4"]`, period, "60", 0): "tokens_gpt-4",
		stripesync.GroupIdentifier("t1", "tokens_by_model", `["o1"]`, period, "30", 0):    "tokens_o1",
	}
	for id, name := range want {
		if st.sent[id] != name {
			t.Errorf("identifier %s went to %q, want %q (sent %v)", id, st.sent[id], name, st.sent)
		}
	}
	rows, err := b.Reconcile(ctx, now)
	if err != nil || len(rows) != 3 {
		t.Fatalf("reconcile through stripe-mock: %+v, %v", rows, err)
	}
	for _, r := range rows {
		if r.Stripe == nil {
			t.Errorf("row %s %s has no Stripe summary", r.Meter, r.Group)
		}
	}
}
