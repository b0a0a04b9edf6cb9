package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/storage/webhooks"
)

// TestWebhookEndpoints: endpoints are refused with every bad field named
// (http:// without WEBHOOK_ALLOW_HTTP among them), created with a secret
// shown once, listed and read without it, changed, rotated (the old
// secret kept 24 h), deleted; each change is in the audit log without a
// secret; a delivery id that names nothing is 404; every answer matches
// the document's schema.
func TestWebhookEndpoints(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{}`)
	check := answerChecker(t)
	hooks := "/v1/admin/tenants/acme/webhooks"
	for _, tt := range []struct {
		name, path, body string
		status           int
		fields           []string
	}{
		{"unknown tenant", "/v1/admin/tenants/nobody/webhooks", `{"url":"https://h.example.com/","kinds":["quota.exceeded"]}`, 404, nil},
		{"nothing", hooks, `{}`, 400, []string{"url", "kinds"}},
		{"http without the setting", hooks, `{"url":"http://127.0.0.1:9/","kinds":["quota.exceeded"]}`, 400, []string{"url"}},
		{"credentials, an unknown kind", hooks, `{"url":"https://u:p@h.example.com/","kinds":["quota.exceeded","boom"]}`, 400, []string{"url", "kinds"}},
		{"thresholds without the kind, one not an amount, one twice", hooks,
			`{"url":"https://h.example.com/","kinds":["quota.exceeded"],"spend_thresholds":["100","1e3","100.00","-5"]}`, 400,
			[]string{"spend_thresholds", "spend_thresholds", "spend_thresholds", "spend_thresholds"}},
		{"state on create", hooks, `{"url":"https://h.example.com/","kinds":["quota.exceeded"],"state":"disabled"}`, 400, []string{"state"}},
	} {
		r := e.do("POST", tt.path, adminKey, "application/json", tt.body)
		if r.status != tt.status {
			t.Fatalf("%s: %d %s, want %d", tt.name, r.status, r.raw, tt.status)
		}
		var body struct{ Errors []struct{ Field string } }
		_ = json.Unmarshal([]byte(r.raw), &body)
		var got []string
		for _, f := range body.Errors {
			got = append(got, f.Field)
		}
		if strings.Join(got, ",") != strings.Join(tt.fields, ",") {
			t.Errorf("%s: fields %v, want %v: %s", tt.name, got, tt.fields, r.raw)
		}
	}

	r := e.do("POST", hooks, adminKey, "application/json",
		`{"url":"https://hooks.example.com/usagemeter","kinds":["spend.threshold","quota.exceeded"],"spend_thresholds":["500.00","100"],"description":"on-call"}`)
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.raw)
	}
	check("POST /v1/admin/tenants/{tenant}/webhooks 201", r)
	var created struct {
		ID, Secret, State string
		Kinds             []string
		SpendThresholds   []string `json:"spend_thresholds"`
	}
	if err := json.Unmarshal([]byte(r.raw), &created); err != nil || !strings.HasPrefix(created.Secret, "whsec_") || created.State != "active" ||
		strings.Join(created.SpendThresholds, ",") != "500.00,100" {
		t.Fatalf("created %s: %v", r.raw, err)
	}
	one := hooks + "/" + created.ID
	for _, path := range []string{hooks, one} {
		r := e.do("GET", path, adminKey, "", "")
		if r.status != 200 || strings.Contains(r.raw, created.Secret) || strings.Contains(r.raw, "whsec_") {
			t.Fatalf("GET %s: %d %s (must not show the secret)", path, r.status, r.raw)
		}
	}
	check("GET /v1/admin/tenants/{tenant}/webhooks 200", e.do("GET", hooks, adminKey, "", ""))
	check("GET /v1/admin/tenants/{tenant}/webhooks/{id} 200", e.do("GET", one, adminKey, "", ""))
	if r := e.do("GET", "/v1/admin/tenants/globex/webhooks/"+created.ID, adminKey, "", ""); r.status != 404 {
		t.Fatalf("another tenant's path: %d", r.status)
	}

	r = e.do("PATCH", one, adminKey, "application/json", `{"state":"disabled","kinds":["quota.exceeded"],"spend_thresholds":[]}`)
	if r.status != 200 || !strings.Contains(r.raw, `"state":"disabled"`) || !strings.Contains(r.raw, `"spend_thresholds":[]`) {
		t.Fatalf("PATCH: %d %s", r.status, r.raw)
	}
	check("PATCH /v1/admin/tenants/{tenant}/webhooks/{id} 200", r)
	if r := e.do("PATCH", one, adminKey, "application/json", `{"state":"failing"}`); r.status != 400 {
		t.Fatalf("PATCH state failing: %d %s", r.status, r.raw)
	}

	r = e.do("POST", one+"/rotate-secret", adminKey, "", "")
	if r.status != 200 {
		t.Fatalf("rotate: %d %s", r.status, r.raw)
	}
	check("POST /v1/admin/tenants/{tenant}/webhooks/{id}/rotate-secret 200", r)
	var rotated struct {
		Secret  string
		Expires *string `json:"previous_secret_expires_at"`
	}
	_ = json.Unmarshal([]byte(r.raw), &rotated)
	if rotated.Secret == created.Secret || !strings.HasPrefix(rotated.Secret, "whsec_") || rotated.Expires == nil {
		t.Fatalf("rotated %s", r.raw)
	}
	r = e.do("GET", one+"/deliveries", adminKey, "", "")
	if r.status != 200 || !strings.Contains(r.raw, `"deliveries":[]`) {
		t.Fatalf("deliveries: %d %s", r.status, r.raw)
	}
	check("GET /v1/admin/tenants/{tenant}/webhooks/{id}/deliveries 200", r)
	if r := e.do("POST", "/v1/admin/webhooks/deliveries/12345/redeliver", adminKey, "", ""); r.status != 404 {
		t.Fatalf("redeliver of nothing: %d %s", r.status, r.raw)
	}
	// A dead delivery, redelivered: pending again, same event, audited.
	now := time.Now().UTC()
	if _, err := webhooks.Enqueue(context.Background(), e.db.Pool, webhooks.Delivery{EndpointID: created.ID, EventID: "b1", EventType: "quota.exceeded",
		Tenant: "acme", Body: `{"id":"b1","type":"quota.exceeded","created":1,"tenant":"acme","data":{}}`, CreatedAt: now, RetryUntil: now}); err != nil {
		t.Fatal(err)
	}
	e.db.Exec(t, `UPDATE webhook_deliveries SET status = 'dead', attempts = 9`)
	ds, _ := webhooks.ListDeliveries(context.Background(), e.db.Pool, webhooks.Filter{EndpointID: created.ID})
	r = e.do("POST", fmt.Sprintf("/v1/admin/webhooks/deliveries/%d/redeliver", ds[0].ID), adminKey, "", "")
	if r.status != 200 || !strings.Contains(r.raw, `"status":"pending"`) || !strings.Contains(r.raw, `"attempts":0`) || !strings.Contains(r.raw, `"event_id":"b1"`) {
		t.Fatalf("redeliver: %d %s", r.status, r.raw)
	}
	check("POST /v1/admin/webhooks/deliveries/{id}/redeliver 200", r)
	if r := e.do("GET", fmt.Sprintf("/v1/admin/audit?target=webhook_delivery:%d", ds[0].ID), adminKey, "", ""); !strings.Contains(r.raw, `"action":"webhook.redeliver"`) || !strings.Contains(r.raw, `"actor":"key:bootstrap"`) {
		t.Fatalf("redelivery not audited: %s", r.raw)
	}
	if r := e.do("DELETE", one, adminKey, "", ""); r.status != 204 {
		t.Fatalf("DELETE: %d %s", r.status, r.raw)
	}
	if r := e.do("GET", one, adminKey, "", ""); r.status != 404 {
		t.Fatalf("GET after DELETE: %d", r.status)
	}

	r = e.do("GET", "/v1/admin/audit?target=webhook_endpoint:"+created.ID, adminKey, "", "")
	if r.status != 200 {
		t.Fatalf("audit: %d %s", r.status, r.raw)
	}
	for _, action := range []string{"webhook.create", "webhook.update", "webhook.rotate_secret", "webhook.delete"} {
		if !strings.Contains(r.raw, `"actor":"key:bootstrap","action":"`+action+`"`) {
			t.Errorf("audit log lacks %s: %s", action, r.raw)
		}
	}
	if strings.Contains(r.raw, "whsec_") {
		t.Errorf("the audit log holds a secret: %s", r.raw)
	}
	_, tenantKey := e.createKey(`{"tenant":"acme"}`)
	if r := e.do("GET", hooks, tenantKey, "", ""); r.status != 403 {
		t.Fatalf("a tenant key: %d", r.status)
	}
	// A viewer key reads endpoints (never a secret) and deliveries, and
	// changes nothing.
	_, viewer := e.createKey(`{"role":"viewer"}`)
	r = e.do("POST", hooks, adminKey, "application/json", `{"url":"https://v.example.com/","kinds":["quota.exceeded"]}`)
	if r.status != 201 {
		t.Fatalf("create for the viewer: %d %s", r.status, r.raw)
	}
	var second struct{ ID string }
	_ = json.Unmarshal([]byte(r.raw), &second)
	for _, path := range []string{hooks, hooks + "/" + second.ID, hooks + "/" + second.ID + "/deliveries"} {
		r := e.do("GET", path, viewer, "", "")
		if r.status != 200 || strings.Contains(r.raw, "whsec_") || strings.Contains(r.raw, "secret\":\"") {
			t.Errorf("a viewer's GET %s: %d %s", path, r.status, r.raw)
		}
	}
	for _, tt := range []struct{ method, path, body string }{
		{"POST", hooks, `{"url":"https://w.example.com/","kinds":["quota.exceeded"]}`},
		{"PATCH", hooks + "/" + second.ID, `{"state":"disabled"}`},
		{"DELETE", hooks + "/" + second.ID, ""},
		{"POST", hooks + "/" + second.ID + "/rotate-secret", ""},
		{"POST", fmt.Sprintf("/v1/admin/webhooks/deliveries/%d/redeliver", ds[0].ID), ""},
	} {
		ct := ""
		if tt.body != "" {
			ct = "application/json"
		}
		if r := e.do(tt.method, tt.path, viewer, ct, tt.body); r.status != 403 {
			t.Errorf("a viewer's %s %s: %d %s, want 403", tt.method, tt.path, r.status, r.raw)
		}
	}
}
