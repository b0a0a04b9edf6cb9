package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/internal/storage/webhooks"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestWebhooksCommands: `biller webhooks endpoints` and `deliveries` list
// (never a secret); `redeliver ID` and `redeliver --endpoint E --dead`
// queue dead deliveries again with their event ids, make a failing
// endpoint active, and are audited; a wrong command line exits 2, an
// unknown id 1.
func TestWebhooksCommands(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	db.Exec(t, `INSERT INTO tenants (tenant) VALUES ('acme')`)
	now := time.Now().UTC()
	ep, err := webhooks.CreateEndpoint(ctx, db.Pool, webhooks.Endpoint{ID: uuid.NewString(), Tenant: "acme", URL: "https://hooks.example.com/",
		Kinds: []string{"quota.exceeded"}, Secret: "whsec_topsecret", CreatedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	var ds []webhooks.Delivery
	for i := range 3 {
		ds = append(ds, webhooks.Delivery{EndpointID: ep.ID, EventID: fmt.Sprint("b", i), EventType: "quota.exceeded", Tenant: "acme",
			Body: "{}", CreatedAt: now, RetryUntil: now})
	}
	if _, err := webhooks.Enqueue(ctx, db.Pool, ds...); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `UPDATE webhook_deliveries SET status = 'dead', attempts = 20`)
	db.Exec(t, `UPDATE webhook_endpoints SET state = 'failing', failing_since = now()`)
	getenv := func(k string) string {
		return map[string]string{"LOG_LEVEL": "error", "KAFKA_BROKERS": "127.0.0.1:1", "STRIPE_API_KEY": "sk_test_cli"}[k]
	}
	biller := func(args ...string) (int, string, string) {
		t.Helper()
		var o, e bytes.Buffer
		code := run(append(args, "-database-url", db.URL), getenv, &o, &e)
		return code, o.String(), e.String()
	}
	code, out, errOut := biller("webhooks", "endpoints")
	if code != 0 || !strings.Contains(out, ep.ID) || !strings.Contains(out, "failing") || strings.Contains(out, "topsecret") {
		t.Fatalf("endpoints: %d %s %s", code, out, errOut)
	}
	code, out, errOut = biller("webhooks", "deliveries", "--status", "dead", "--format", "json")
	var listed []webhooks.Delivery
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 3 {
		t.Fatalf("deliveries: %d %s %s", code, out, errOut)
	}
	for _, bad := range [][]string{{"webhooks", "redeliver"}, {"webhooks", "redeliver", "--dead"}, {"webhooks", "redeliver", "x"},
		{"webhooks", "deliveries", "--status", "lost"}} {
		if code, _, _ := biller(bad...); code == 0 {
			t.Errorf("%v: exit 0", bad)
		}
	}
	if code, _, _ := biller("webhooks", "redeliver", "999999"); code != 1 {
		t.Errorf("an unknown delivery: exit %d, want 1", code)
	}
	// One by id, then the rest of the endpoint's dead ones.
	code, out, errOut = biller("webhooks", "redeliver", fmt.Sprint(listed[0].ID), "--actor", "ops")
	if code != 0 || !strings.Contains(out, "1 deliveries queued again") {
		t.Fatalf("redeliver ID: %d %s %s", code, out, errOut)
	}
	code, out, errOut = biller("webhooks", "redeliver", "--endpoint", ep.ID, "--dead", "--actor", "ops")
	if code != 0 || !strings.Contains(out, "2 deliveries queued again") {
		t.Fatalf("redeliver --endpoint: %d %s %s", code, out, errOut)
	}
	after, _ := webhooks.ListDeliveries(ctx, db.Pool, webhooks.Filter{})
	for _, d := range after {
		if d.Status != webhooks.StatusPending || d.Attempts != 0 || !d.RetryUntil.After(now.Add(71*time.Hour)) {
			t.Errorf("after redelivery: %+v", d)
		}
	}
	if e, _ := webhooks.GetEndpoint(ctx, db.Pool, "", ep.ID); e.State != webhooks.StateActive {
		t.Errorf("endpoint %s, want active", e.State)
	}
	var audited int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'webhook.redeliver' AND actor = 'cli:ops'`).Scan(&audited); err != nil || audited != 3 {
		t.Fatalf("%d audit rows (%v), want 3", audited, err)
	}
}
