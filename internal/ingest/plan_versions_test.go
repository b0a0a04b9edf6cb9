package ingest_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestPlanVersionsAdminAPI: PUT of a plan makes a version when its
// content changes and nothing when it does not; effective_from before the
// latest version's is 400; a future version is scheduled and GET answers
// the version in force; the versions list shows them all. A tenant's plan
// changes at plan_effective_from (400 before the latest change or in the
// future), and its history lists every assignment.
func TestPlanVersionsAdminAPI(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	e := newEnv(t, envOpts{now: func() time.Time { return now }})
	const j = "application/json"
	put := func(path, body string, want int) response {
		t.Helper()
		r := e.do("PUT", path, adminKey, j, body)
		if r.status != want {
			t.Fatalf("PUT %s %s: %d %s, want %d", path, body, r.status, r.raw, want)
		}
		return r
	}
	quotas := func(limit int) string {
		return fmt.Sprintf(`"quotas":[{"metric":"api_calls","limit":%d,"period":"month"}]`, limit)
	}
	r := put("/v1/admin/plans/pro", `{`+quotas(1000)+`}`, 200)
	if r.body["version"] != 1.0 || r.body["effective_from"] != nil || r.body["proration"] != "immediate" {
		t.Fatalf("first version: %s", r.raw)
	}
	if r = put("/v1/admin/plans/pro", `{`+quotas(1000)+`}`, 200); r.body["version"] != 1.0 {
		t.Fatalf("the same content made a version: %s", r.raw)
	}
	r = put("/v1/admin/plans/pro", `{"proration":"prorate","effective_from":"2026-11-11T00:00:00Z",`+quotas(2000)+`}`, 200)
	if r.body["version"] != 2.0 || r.body["effective_from"] != "2026-11-11T00:00:00Z" || r.body["proration"] != "prorate" || r.body["scheduled"] != false {
		t.Fatalf("second version: %s", r.raw)
	}
	put("/v1/admin/plans/pro", `{"effective_from":"2026-11-10T00:00:00Z",`+quotas(3000)+`}`, 400)
	put("/v1/admin/plans/pro", `{"proration":"sometimes",`+quotas(3000)+`}`, 400)
	r = put("/v1/admin/plans/pro", `{"effective_from":"2026-12-01T00:00:00Z",`+quotas(3000)+`}`, 200)
	if r.body["version"] != 3.0 || r.body["scheduled"] != true {
		t.Fatalf("scheduled version: %s", r.raw)
	}
	if g := e.do("GET", "/v1/admin/plans/pro", adminKey, "", ""); g.status != 200 || g.body["version"] != 2.0 {
		t.Fatalf("GET plan: %d %s, want version 2 in force", g.status, g.raw)
	}
	if g := e.do("GET", "/v1/admin/plans/pro/versions", adminKey, "", ""); g.status != 200 || len(g.body["versions"].([]any)) != 3 {
		t.Fatalf("GET versions: %d %s", g.status, g.raw)
	}
	if g := e.do("GET", "/v1/admin/plans/nope/versions", adminKey, "", ""); g.status != 404 {
		t.Fatalf("GET versions of an unknown plan: %d", g.status)
	}

	put("/v1/admin/plans/free", `{`+quotas(100)+`}`, 200)
	put("/v1/admin/tenants/acme", `{"plan":"free"}`, 200)
	put("/v1/admin/tenants/acme", `{"plan":"pro","plan_effective_from":"2026-11-15T00:00:00Z"}`, 200)
	put("/v1/admin/tenants/acme", `{"plan":"free","plan_effective_from":"2026-11-14T00:00:00Z"}`, 400)
	put("/v1/admin/tenants/acme", `{"plan":"free","plan_effective_from":"2026-11-22T00:00:00Z"}`, 400)
	h := e.do("GET", "/v1/admin/tenants/acme/plans", adminKey, "", "")
	plans, _ := h.body["plans"].([]any)
	if h.status != 200 || len(plans) != 2 {
		t.Fatalf("history: %d %s", h.status, h.raw)
	}
	first, second := plans[0].(map[string]any), plans[1].(map[string]any)
	if first["plan"] != "free" || first["valid_from"] != nil || first["valid_to"] != "2026-11-15T00:00:00Z" ||
		second["plan"] != "pro" || second["valid_from"] != "2026-11-15T00:00:00Z" || second["valid_to"] != nil || second["source"] != "admin" {
		t.Fatalf("history: %s", h.raw)
	}
	if g := e.do("GET", "/v1/admin/tenants/acme", adminKey, "", ""); g.body["plan"] != "pro" {
		t.Fatalf("tenant: %s, want plan pro now", g.raw)
	}
	// The quotas now: pro's versions over November, prorated (version 2's
	// policy): free 100 for 14 days, then pro (version 2, 2,000) for 16
	// days of 30: 46.67 + 1066.67 → 1113.
	q := e.do("GET", "/v1/quotas/acme", adminKey, "", "")
	qs, _ := q.body["quotas"].([]any)
	if q.status != 200 || q.body["plan"] != "pro" || q.body["plan_source"] != "admin" || len(qs) != 1 || qs[0].(map[string]any)["limit"] != 1113.0 {
		t.Fatalf("quotas: %d %s", q.status, q.raw)
	}
	if g := e.do("GET", "/v1/admin/tenants/nobody/plans", adminKey, "", ""); g.status != http.StatusNotFound {
		t.Fatalf("history of an unknown tenant: %d", g.status)
	}
}
