package ingest_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/auth"
)

// auditRow is one audit_log row as the tests read it.
type auditRow struct {
	id                                   int64
	actor, action, target, before, after string
	note                                 string
}

// auditRowsAfter reads the audit_log rows with ids above after, oldest
// first; before and after are compact JSON with sorted keys ("" for
// null).
func auditRowsAfter(t *testing.T, e *env, after int64) []auditRow {
	t.Helper()
	rows, err := e.db.Pool.Query(context.Background(), `SELECT id, actor, action, target, coalesce(before::text, ''), coalesce(after::text, ''), note
		FROM audit_log WHERE id > $1 ORDER BY id`, after)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []auditRow
	for rows.Next() {
		var r auditRow
		if err := rows.Scan(&r.id, &r.actor, &r.action, &r.target, &r.before, &r.after, &r.note); err != nil {
			t.Fatal(err)
		}
		r.before, r.after = compactJSON(t, r.before), compactJSON(t, r.after)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func compactJSON(t *testing.T, s string) string {
	if s == "" {
		return ""
	}
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("audit document %q: %v", s, err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// TestEveryAdminMutationIsAuditedOnce performs every mutation of the
// admin API and asserts that each real change appends exactly one
// audit_log row with its actor (key:<id>), action, target, before and
// after; that a request changing nothing, or failing, appends none; that
// no row holds a key's secret or its hash; and that GET /v1/admin/audit
// pages through them all, filtered, as the document says.
func TestEveryAdminMutationIsAuditedOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	check := answerChecker(t)
	month := time.Now().UTC().Format("2006-01")
	secrets := []string{adminKey}

	// The bootstrap key makes a stored admin key; that key does the rest.
	r := e.do("POST", "/v1/admin/keys", adminKey, "application/json", `{"role":"admin"}`)
	if r.status != http.StatusCreated {
		t.Fatalf("admin key: %d %s", r.status, r.raw)
	}
	adminID, admin := r.body["id"].(string), r.body["key"].(string)
	secrets = append(secrets, admin)
	rows := auditRowsAfter(t, e, 0)
	if len(rows) != 1 || rows[0].actor != "key:bootstrap" || rows[0].action != "key.create" || rows[0].target != "key:"+adminID ||
		rows[0].before != "" || !strings.Contains(rows[0].after, `"role":"admin"`) {
		t.Fatalf("the admin key's creation: %+v", rows)
	}
	last := rows[0].id
	actor := "key:" + adminID

	// ids made along the way, for the steps that name them.
	ids := map[string]string{}
	const adjID = "8d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a77"
	steps := []struct {
		name, method   string
		path, body     func() string
		status         int
		save           string // the answer's id is saved under this name
		action, target string // "": no row expected
		before, after  []string
		beforeNull     bool
		note           string
	}{
		{name: "new plan", method: "PUT", path: lit("/v1/admin/plans/pro"), body: lit(`{"quotas":[{"metric":"api_calls","limit":1000}]}`), status: 200,
			action: "plan.put", target: "plan:pro", beforeNull: true, after: []string{`"version":1`, `"limit":1000`}},
		{name: "the same plan again", method: "PUT", path: lit("/v1/admin/plans/pro"), body: lit(`{"quotas":[{"metric":"api_calls","limit":1000}]}`), status: 200},
		{name: "a plan's new version", method: "PUT", path: lit("/v1/admin/plans/pro"), body: lit(`{"quotas":[{"metric":"api_calls","limit":2000}]}`), status: 200,
			action: "plan.put", target: "plan:pro", before: []string{`"version":1`, `"limit":1000`}, after: []string{`"version":2`, `"limit":2000`}},
		{name: "a refused plan", method: "PUT", path: lit("/v1/admin/plans/pro"), body: lit(`{"quotas":[{"metric":"api_calls","limit":-1}]}`), status: 400},
		{name: "new tenant", method: "PUT", path: lit("/v1/admin/tenants/acme"), body: lit(`{"plan":"pro"}`), status: 200,
			action: "tenant.put", target: "tenant:acme", beforeNull: true, after: []string{`"plan":"pro"`, `"tenant":"acme"`}},
		{name: "the same tenant again", method: "PUT", path: lit("/v1/admin/tenants/acme"), body: lit(`{"plan":"pro"}`), status: 200},
		{name: "a tenant's Stripe customer", method: "PUT", path: lit("/v1/admin/tenants/acme"), body: lit(`{"plan":"pro","stripe_customer_id":"cus_A1"}`), status: 200,
			action: "tenant.put", target: "tenant:acme", before: []string{`"stripe_customer_id":""`}, after: []string{`"stripe_customer_id":"cus_A1"`}},
		{name: "a tenant on an unknown plan", method: "PUT", path: lit("/v1/admin/tenants/acme"), body: lit(`{"plan":"nope"}`), status: 400},
		{name: "tenant key", method: "POST", path: lit("/v1/admin/keys"), body: lit(`{"tenant":"acme"}`), status: 201, save: "tenant key",
			action: "key.create", target: "key:{tenant key}", beforeNull: true, after: []string{`"tenant":"acme"`, `"scope":"write"`}},
		{name: "a key for an unknown tenant", method: "POST", path: lit("/v1/admin/keys"), body: lit(`{"tenant":"nobody"}`), status: 404},
		{name: "rotation", method: "POST", path: func() string { return "/v1/admin/keys/" + ids["tenant key"] + "/rotate" }, body: lit(`{"grace":"1h"}`), status: 201, save: "rotated key",
			action: "key.rotate", target: "key:{tenant key}", before: []string{`"expires_at":null`}, after: []string{`"successor":{`, `"rotated_from":"{tenant key}"`}},
		{name: "a second rotation", method: "POST", path: func() string { return "/v1/admin/keys/" + ids["tenant key"] + "/rotate" }, body: lit(``), status: 409},
		{name: "revocation", method: "DELETE", path: func() string { return "/v1/admin/keys/" + ids["rotated key"] }, body: lit(``), status: 204,
			action: "key.revoke", target: "key:{rotated key}", before: []string{`"revoked_at":null`}, after: []string{`"id":"{rotated key}"`}},
		{name: "revoking it again", method: "DELETE", path: func() string { return "/v1/admin/keys/" + ids["rotated key"] }, body: lit(``), status: 204},
		{name: "revoking an unknown key", method: "DELETE", path: lit("/v1/admin/keys/0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8b"), body: lit(``), status: 404},
		{name: "new meter", method: "PUT", path: lit("/v1/admin/meters/tokens_by_model"), body: lit(`{"metric":"tokens","aggregation":"sum","group_by":["model"]}`), status: 201,
			action: "meter.put", target: "meter:tokens_by_model", beforeNull: true, after: []string{`"version":1`, `"group_by":["model"]`}},
		{name: "the same meter again", method: "PUT", path: lit("/v1/admin/meters/tokens_by_model"), body: lit(`{"metric":"tokens","aggregation":"sum","group_by":["model"]}`), status: 200},
		{name: "a meter's change", method: "PUT", path: lit("/v1/admin/meters/tokens_by_model"), body: lit(`{"metric":"tokens","aggregation":"sum","group_by":["model"],"description":"per model"}`), status: 200,
			action: "meter.put", target: "meter:tokens_by_model", before: []string{`"version":1`}, after: []string{`"version":2`, `"description":"per model"`}},
		{name: "a refused meter", method: "PUT", path: lit("/v1/admin/meters/bad"), body: lit(`{"metric":"tokens","aggregation":"median"}`), status: 400},
		{name: "grant", method: "POST", path: lit("/v1/admin/tenants/acme/grants"), body: lit(`{"meter":"tokens_by_model","amount":100,"reason":"launch","source":"promotional"}`), status: 201, save: "grant",
			action: "grant.create", target: "grant:{grant}", beforeNull: true, after: []string{`"amount":100`}, note: "launch"},
		{name: "a refused grant", method: "POST", path: lit("/v1/admin/tenants/acme/grants"), body: lit(`{"meter":"tokens_by_model","amount":0,"reason":"x","source":"promotional"}`), status: 400},
		{name: "void", method: "POST", path: func() string { return "/v1/admin/tenants/acme/grants/" + ids["grant"] + "/void" }, body: lit(`{"reason":"by mistake"}`), status: 200,
			action: "grant.void", target: "grant:{grant}", before: []string{`"voided_at":null`}, after: []string{`"void_reason":"by mistake"`}, note: "by mistake"},
		{name: "a second void", method: "POST", path: func() string { return "/v1/admin/tenants/acme/grants/" + ids["grant"] + "/void" }, body: lit(`{"reason":"again"}`), status: 409},
		{name: "billing cycle", method: "PUT", path: lit("/v1/admin/tenants/acme/billing-cycle"), body: lit(`{"anchor":"2026-01-15T00:00:00Z","interval":"month"}`), status: 200,
			action: "billing_cycle.put", target: "tenant:acme", before: []string{`"calendar":true`}, after: []string{`"history":[{"cycle":{"anchor":"2026-01-15T00:00:00Z"`}},
		{name: "the same billing cycle again", method: "PUT", path: lit("/v1/admin/tenants/acme/billing-cycle"), body: lit(`{"anchor":"2026-01-15T00:00:00Z","interval":"month"}`), status: 200},
		{name: "adjustment", method: "POST", path: lit("/v1/admin/adjustments"), status: 202,
			body:   lit(`{"id":"` + adjID + `","tenant":"acme","meter":"tokens_by_model","group":{"model":"gpt"},"period":"` + month + `","amount":5,"reason":"refund","reference":"T-1"}`),
			action: "adjustment.create", target: "adjustment:" + adjID, beforeNull: true, after: []string{`"amount":5`, `"reference":"T-1"`}},
		{name: "the same adjustment resent", method: "POST", path: lit("/v1/admin/adjustments"), status: 202,
			body: lit(`{"id":"` + adjID + `","tenant":"acme","meter":"tokens_by_model","group":{"model":"gpt"},"period":"` + month + `","amount":5,"reason":"refund","reference":"T-1"}`)},
		{name: "an adjustment for an unknown tenant", method: "POST", path: lit("/v1/admin/adjustments"), status: 404,
			body: lit(`{"tenant":"nobody","meter":"tokens_by_model","group":{"model":"gpt"},"period":"` + month + `","amount":5,"reason":"","reference":""}`)},
		{name: "bootstrap key revocation", method: "DELETE", path: lit("/v1/admin/keys/bootstrap"), body: lit(``), status: 204,
			action: "key.revoke", target: "", beforeNull: true, after: []string{`"bootstrap":true`, `"revoked_at":"`}},
	}
	expand := func(s string) string {
		for k, v := range ids {
			s = strings.ReplaceAll(s, "{"+k+"}", v)
		}
		return s
	}
	audited := 1 // the admin key's creation
	for _, st := range steps {
		r := e.do(st.method, st.path(), admin, "application/json", st.body())
		if r.status != st.status {
			t.Fatalf("%s: %d %s, want %d", st.name, r.status, r.raw, st.status)
		}
		if st.save != "" {
			ids[st.save] = r.body["id"].(string)
		}
		if k, ok := r.body["key"].(string); ok {
			secrets = append(secrets, k)
		}
		rows := auditRowsAfter(t, e, last)
		if st.action == "" {
			if len(rows) != 0 {
				t.Errorf("%s: changed nothing but audited %+v", st.name, rows)
			}
			continue
		}
		if len(rows) != 1 {
			t.Fatalf("%s: %d audit rows, want 1: %+v", st.name, len(rows), rows)
		}
		row := rows[0]
		last = row.id
		audited++
		if row.actor != actor || row.action != st.action || (st.target != "" && row.target != expand(st.target)) || row.note != st.note {
			t.Errorf("%s: audited %s %s by %s (note %q), want %s %s by %s (note %q)", st.name, row.action, row.target, row.actor, row.note,
				st.action, expand(st.target), actor, st.note)
		}
		if st.beforeNull != (row.before == "") {
			t.Errorf("%s: before %s, want null: %v", st.name, row.before, st.beforeNull)
		}
		for _, want := range st.before {
			if !strings.Contains(row.before, expand(want)) {
				t.Errorf("%s: before %s, want %s in it", st.name, row.before, expand(want))
			}
		}
		for _, want := range st.after {
			if !strings.Contains(row.after, expand(want)) {
				t.Errorf("%s: after %s, want %s in it", st.name, row.after, expand(want))
			}
		}
	}

	// No row holds a secret, nor its hash in any usual spelling.
	all := auditRowsAfter(t, e, 0)
	if len(all) != audited {
		t.Fatalf("%d audit rows, want %d", len(all), audited)
	}
	text := fmt.Sprintf("%+v", all)
	for _, s := range secrets {
		h := auth.Hash(s)
		for _, bad := range []string{s, hex.EncodeToString(h), base64.StdEncoding.EncodeToString(h), base64.RawURLEncoding.EncodeToString(h), `\\x` + hex.EncodeToString(h)} {
			if strings.Contains(text, bad) {
				t.Fatalf("the audit log holds a secret or its hash (%.12s...)", bad)
			}
		}
	}
	if strings.Contains(text, "hash") {
		t.Errorf("an audit document names a hash: %s", text)
	}

	// The API pages through every row, newest first, 4 at a time.
	var got []int64
	after := ""
	for page := 0; ; page++ {
		r := e.do("GET", "/v1/admin/audit?limit=4"+after, admin, "", "")
		check("GET /v1/admin/audit 200", r)
		for _, en := range r.body["entries"].([]any) {
			got = append(got, int64(en.(map[string]any)["id"].(float64)))
		}
		next, ok := r.body["next_after"].(float64)
		if !ok {
			break
		}
		after = fmt.Sprintf("&after=%d", int64(next))
		if page > audited {
			t.Fatal("paging does not end")
		}
	}
	if len(got) != audited || got[0] != all[len(all)-1].id || got[len(got)-1] != all[0].id {
		t.Errorf("paged ids %v, want the %d rows newest first", got, audited)
	}
	for _, f := range []struct {
		query string
		want  int
	}{
		{"action=key.*", 5},                    // create ×2, rotate, revoke ×2
		{"action=key.", 5},                     // a trailing dot is a prefix too
		{"action=key", 0},                      // exact
		{"target=tenant:*", 3},                 // tenant.put ×2, billing_cycle.put
		{"target=tenant:acme", 3},              //
		{"target=plan:pro&action=plan.put", 2}, //
		{"actor=key:bootstrap", 1},             //
		{"actor=key:*", audited},               //
		{"actor=cli:*", 0},                     //
		{"from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z", 0},
		{"from=2000-01-01T00:00:00Z", audited},
	} {
		r := e.do("GET", "/v1/admin/audit?"+f.query, admin, "", "")
		check("GET /v1/admin/audit 200", r)
		if n := len(r.body["entries"].([]any)); n != f.want {
			t.Errorf("GET /v1/admin/audit?%s: %d entries, want %d", f.query, n, f.want)
		}
	}
	for _, q := range []string{"limit=0", "after=0", "after=x", "from=yesterday", "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"} {
		if r := e.do("GET", "/v1/admin/audit?"+q, admin, "", ""); r.status != http.StatusBadRequest {
			t.Errorf("GET /v1/admin/audit?%s: %d %s, want 400", q, r.status, r.raw)
		}
	}
}

func lit(s string) func() string { return func() string { return s } }
