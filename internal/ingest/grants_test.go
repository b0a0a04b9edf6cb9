package ingest_test

import (
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestCreditGrants: grants are refused with every bad field named, made
// idempotent by a client id, shown with their burn-down in GET
// /v1/quotas and the admin list, voided once, listed when they expired
// unused, and every creation and void is in the audit log; each answer
// matches the document's schema.
func TestCreditGrants(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 10, 12, 30, 0, 0, time.UTC)
	var clock atomic.Int64 // the server's clock, moved by the test
	clock.Store(now.UnixNano())
	e := newEnv(t, envOpts{now: func() time.Time { return time.Unix(0, clock.Load()).UTC() }})
	defineMeters(t, e)
	if r := e.do("PUT", "/v1/admin/plans/pro", adminKey, "application/json", `{"quotas":[{"metric":"tokens","limit":1000,"hard":true}]}`); r.status != 200 {
		t.Fatalf("PUT plan: %d %s", r.status, r.raw)
	}
	_, acme := e.createKey(`{"tenant":"acme"}`)
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"pro"}`)
	check := answerChecker(t)
	grants := "/v1/admin/tenants/acme/grants"

	for _, tt := range []struct {
		name, path, body string
		status           int
		fields           []string
	}{
		{"unknown tenant", "/v1/admin/tenants/nobody/grants", `{"meter":"tokens","amount":1,"reason":"r","source":"refund"}`, 404, nil},
		{"every bad field", grants, `{"id":"nope","meter":"tokens","amount":0,"effective_at":"2026-11-02T00:00:00Z","expires_at":"2026-11-01T00:00:00Z","reason":" ","source":"gift"}`, 400,
			[]string{"id", "amount", "expires_at", "reason", "source"}},
		{"unknown meter", grants, `{"meter":"nope","amount":5,"reason":"r","source":"refund"}`, 400, []string{"meter"}},
		{"a max meter", grants, `{"meter":"tokens_total","amount":5,"reason":"r","source":"refund"}`, 400, []string{"meter"}},
		{"expiry equal to effective", grants, `{"meter":"tokens","amount":5,"effective_at":"2026-11-02T00:00:00Z","expires_at":"2026-11-02T00:00:00Z","reason":"r","source":"refund"}`, 400, []string{"expires_at"}},
	} {
		r := e.do("POST", tt.path, adminKey, "application/json", tt.body)
		if r.status != tt.status {
			t.Fatalf("%s: %d %s, want %d", tt.name, r.status, r.raw, tt.status)
		}
		var body struct {
			Errors []struct{ Field string }
		}
		_ = json.Unmarshal([]byte(r.raw), &body)
		var got []string
		for _, f := range body.Errors {
			got = append(got, f.Field)
		}
		if strings.Join(got, ",") != strings.Join(tt.fields, ",") {
			t.Errorf("%s: fields %v, want %v: %s", tt.name, got, tt.fields, r.raw)
		}
	}

	const id1, id2 = "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a01", "0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a02"
	body1 := `{"id":"` + id1 + `","meter":"tokens","amount":500,"reason":"goodwill after an outage","source":"goodwill"}`
	r := e.do("POST", grants, adminKey, "application/json", body1)
	if r.status != 201 || r.body["effective_at"] != "2026-11-10T12:00:00Z" || r.body["expires_at"] != nil || r.body["priority"].(float64) != 10 {
		t.Fatalf("create: %d %s", r.status, r.raw)
	}
	check("POST /v1/admin/tenants/{tenant}/grants 201", r)
	again := e.do("POST", grants, adminKey, "application/json", body1)
	if again.status != 200 || again.raw != r.raw {
		t.Fatalf("the same id and body again: %d %s, want 200 %s", again.status, again.raw, r.raw)
	}
	clock.Store(now.Add(2 * time.Hour).UnixNano()) // a retry without effective_at, hours later, is the same grant
	if again := e.do("POST", grants, adminKey, "application/json", body1); again.status != 200 || again.raw != r.raw {
		t.Fatalf("a later retry: %d %s, want 200 %s", again.status, again.raw, r.raw)
	}
	clock.Store(now.UnixNano())
	if r := e.do("POST", grants, adminKey, "application/json", strings.Replace(body1, "500", "501", 1)); r.status != 409 || errorCode(r) != "id_conflict" {
		t.Fatalf("the same id, another body: %d %s", r.status, r.raw)
	}
	if r := e.do("POST", grants, acme, "application/json", body1); r.status != 403 {
		t.Fatalf("a tenant key made a grant: %d", r.status)
	}
	// One that expired on Nov 5 after burning 30 of its 100, rounded to
	// whole hours.
	if r := e.do("POST", grants, adminKey, "application/json", `{"id":"`+id2+`","meter":"tokens","amount":100,"priority":1,
		"effective_at":"2026-11-01T00:59:00Z","expires_at":"2026-11-04T23:00:01Z","reason":"launch","source":"promotional"}`); r.status != 201 ||
		r.body["effective_at"] != "2026-11-01T00:00:00Z" || r.body["expires_at"] != "2026-11-05T00:00:00Z" {
		t.Fatalf("create: %d %s", r.status, r.raw)
	}
	month := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	e.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
		('acme', 'tokens', '', 'month', $1, 1330, 2),
		('acme', 'tokens', '', 'hour', $2, 1030, 1),
		('acme', 'tokens', '', 'hour', $3, 300, 1)`, month, month.Add(25*time.Hour), time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC))

	quotaOf := func() map[string]any {
		t.Helper()
		r := e.do("GET", "/v1/quotas/acme", acme, "", "")
		if r.status != 200 {
			t.Fatalf("quotas: %d %s", r.status, r.raw)
		}
		check("GET /v1/quotas/{tenant} 200", r)
		return r.body["quotas"].([]any)[0].(map[string]any)
	}
	summary := func(q map[string]any) string {
		var parts []string
		for _, g := range q["grants"].([]any) {
			g := g.(map[string]any)
			parts = append(parts, g["id"].(string)[34:]+":"+compact(g["burnt"])+"/"+compact(g["remaining"]))
		}
		return strings.Join([]string{compact(q["limit"]), compact(q["allowance"]), compact(q["used"]), compact(q["remaining"]), q["state"].(string), strings.Join(parts, " ")}, " ")
	}
	// 1030 in hour Nov 2 01:00 burns 1000 of the plan and 30 of grant 2;
	// 300 in the hour of now burns grant 1. Allowance: 1000 + 500 (grant
	// 1, active) + 30 (what grant 2 covered before it expired).
	if got, want := summary(quotaOf()), "1000 1530 1330 200 warning 02:30/0 01:300/200"; got != want {
		t.Errorf("quota = %s, want %s", got, want)
	}
	r = e.do("GET", grants, adminKey, "", "")
	check("GET /v1/admin/tenants/{tenant}/grants 200", r)
	if !strings.Contains(r.raw, `"status":"expired","burnt":30,"remaining":0`) || !strings.Contains(r.raw, `"status":"active","burnt":300,"remaining":200`) {
		t.Errorf("list: %s", r.raw)
	}
	r = e.do("GET", "/v1/admin/grants/expired?from=2026-11-01T00:00:00Z&to=2026-11-10T00:00:00Z", adminKey, "", "")
	check("GET /v1/admin/grants/expired 200", r)
	if l := r.body["grants"].([]any); len(l) != 1 || l[0].(map[string]any)["id"] != id2 || compact(l[0].(map[string]any)["unused"]) != "70" {
		t.Errorf("expired: %s", r.raw)
	}
	if r := e.do("GET", "/v1/admin/grants/expired?from=yesterday", adminKey, "", ""); r.status != 400 {
		t.Errorf("a bad from: %d", r.status)
	}

	void := grants + "/" + id1 + "/void"
	if r := e.do("POST", void, adminKey, "application/json", `{"reason":""}`); r.status != 400 {
		t.Fatalf("void without a reason: %d %s", r.status, r.raw)
	}
	if r := e.do("POST", grants+"/0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7aff/void", adminKey, "application/json", `{"reason":"x"}`); r.status != 404 {
		t.Fatalf("void of an unknown grant: %d %s", r.status, r.raw)
	}
	r = e.do("POST", void, adminKey, "application/json", `{"reason":"granted by mistake"}`)
	if r.status != 200 || r.body["void_reason"] != "granted by mistake" {
		t.Fatalf("void: %d %s", r.status, r.raw)
	}
	check("POST /v1/admin/tenants/{tenant}/grants/{id}/void 200", r)
	if r := e.do("POST", void, adminKey, "application/json", `{"reason":"again"}`); r.status != 409 || errorCode(r) != "grant_voided" {
		t.Fatalf("void twice: %d %s", r.status, r.raw)
	}
	// Voided: what grant 1 covered (300) stays covered, the rest is lost.
	if got, want := summary(quotaOf()), "1000 1330 1330 0 exceeded 02:30/0 01:300/0"; got != want {
		t.Errorf("quota after the void = %s, want %s", got, want)
	}

	r = e.do("GET", "/v1/admin/audit?target=grant:"+id1, adminKey, "", "")
	check("GET /v1/admin/audit 200", r)
	entries := r.body["entries"].([]any)
	if len(entries) != 2 || entries[0].(map[string]any)["action"] != "grant.void" || entries[1].(map[string]any)["action"] != "grant.create" ||
		entries[0].(map[string]any)["before"] == nil || entries[1].(map[string]any)["before"] != nil || entries[0].(map[string]any)["actor"] == "" {
		t.Errorf("audit: %s", r.raw)
	}
	if r := e.do("GET", "/v1/admin/audit?action=grant.create&limit=1", adminKey, "", ""); r.status != 200 || len(r.body["entries"].([]any)) != 1 {
		t.Errorf("audit by action: %d %s", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/admin/audit?limit=0", adminKey, "", ""); r.status != 400 {
		t.Errorf("audit limit 0: %d", r.status)
	}
	// A quota without grants answers as before: no allowance, no grants.
	e.do("PUT", "/v1/admin/tenants/globex", adminKey, "application/json", `{"plan":"pro"}`)
	_, globex := e.createKey(`{"tenant":"globex"}`)
	if r := e.do("GET", "/v1/quotas/globex", globex, "", ""); strings.Contains(r.raw, "allowance") || strings.Contains(r.raw, "grants") {
		t.Errorf("a quota without grants: %s", r.raw)
	}
}

// TestBillingAdminInputEdges: an explicit null or an empty id is refused
// rather than taken for a field left out, an empty tenant filter is
// refused, and an audit filter no stored text can hold matches nothing
// instead of failing.
func TestBillingAdminInputEdges(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	defineMeters(t, e)
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{}`)
	grant := `"meter":"tokens","amount":5,"reason":"r","source":"goodwill"`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"null priority", "POST", "/v1/admin/tenants/acme/grants", `{` + grant + `,"priority":null}`, 400, `must not be null`},
		{"empty grant id", "POST", "/v1/admin/tenants/acme/grants", `{` + grant + `,"id":""}`, 400, `"field":"id"`},
		{"null adjustment reference", "POST", "/v1/admin/adjustments", `{"tenant":"acme","meter":"tokens","period":"2026-11","amount":-5,"reference":null}`, 400, `must not be null`},
		{"empty adjustment id", "POST", "/v1/admin/adjustments", `{"id":"","tenant":"acme","meter":"tokens","period":"2026-11","amount":-5}`, 400, `id must be a UUID`},
		{"empty tenant filter", "GET", "/v1/admin/adjustments?tenant=", "", 400, `invalid_request`},
		{"empty period filter", "GET", "/v1/admin/adjustments?period=", "", 400, `invalid_request`},
		{"empty expiry bound", "GET", "/v1/admin/grants/expired?to=", "", 400, `RFC 3339`},
		{"audit filter with NUL", "GET", "/v1/admin/audit?action=%00x", "", 200, `{"entries":[],"next_after":null}`},
	} {
		ct := ""
		if tc.body != "" {
			ct = "application/json"
		}
		r := e.do(tc.method, tc.path, adminKey, ct, tc.body)
		if r.status != tc.status || !strings.Contains(string(r.raw), tc.want) {
			t.Errorf("%s: %d %s, want %d with %s", tc.name, r.status, r.raw, tc.status, tc.want)
		}
	}
}
