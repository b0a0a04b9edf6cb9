package ingest_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/ratelimit"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// keyRow returns the listed key with id, or fails.
func (e *env) keyRow(id string) map[string]any {
	e.t.Helper()
	r := e.do("GET", "/v1/admin/keys", adminKey, "", "")
	if r.status != 200 {
		e.t.Fatalf("list keys: %d %s", r.status, r.raw)
	}
	for _, k := range r.body["keys"].([]any) {
		if m := k.(map[string]any); m["id"] == id {
			return m
		}
	}
	e.t.Fatalf("key %s not listed: %s", id, r.raw)
	return nil
}

func (e *env) countKeys() int {
	e.t.Helper()
	var n int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM api_keys`).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// TestKeyScopes: a read-scoped tenant key reads its tenant and sends
// nothing (403 read_only_key); {"tenant"} and "scope":"write" write and
// read; any other scope is refused.
func TestKeyScopes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.do("PUT", "/v1/admin/tenants/globex", adminKey, "application/json", `{}`)
	readID, read := e.createKey(`{"tenant":"acme","scope":"read"}`)
	_, write := e.createKey(`{"tenant":"acme","scope":"write"}`)
	_, plain := e.createKey(`{"tenant":"acme"}`)
	_, viewer := e.createKey(`{"role":"viewer"}`)
	if row := e.keyRow(readID); row["scope"] != "read" || row["tenant"] != "acme" || row["role"] != "tenant" {
		t.Fatalf("listed read key: %v", row)
	}
	ev := eventJSON("scope-1", "acme", 1)
	tests := []struct {
		name, method, path, key, body string
		status                        int
		code                          string
	}{
		{"read key sends", "POST", "/v1/events", read, ev, 403, "read_only_key"},
		{"read key sends another tenant's", "POST", "/v1/events", read, eventJSON("scope-2", "globex", 1), 403, "read_only_key"},
		{"read key reads usage", "GET", "/v1/usage?tenant=acme&metric=api_calls", read, "", 200, ""},
		{"read key reads usage, tenant implied", "GET", "/v1/usage?metric=api_calls", read, "", 200, ""},
		{"read key reads quotas", "GET", "/v1/quotas/acme", read, "", 200, ""},
		{"read key reads breaches", "GET", "/v1/breaches?tenant=acme", read, "", 200, ""},
		{"read key reads another tenant", "GET", "/v1/quotas/globex", read, "", 403, "forbidden"},
		{"read key on admin route", "GET", "/v1/admin/keys", read, "", 403, "forbidden"},
		{"write key sends", "POST", "/v1/events", write, eventJSON("scope-3", "acme", 1), 202, ""},
		{"write key sends another tenant's", "POST", "/v1/events", write, eventJSON("scope-4", "globex", 1), 403, "forbidden"},
		{"write key reads", "GET", "/v1/quotas/acme", write, "", 200, ""},
		{"key without scope sends", "POST", "/v1/events", plain, eventJSON("scope-5", "acme", 1), 202, ""},
		{"viewer sends", "POST", "/v1/events", viewer, eventJSON("scope-6", "acme", 1), 403, "forbidden"},
		{"viewer reads any tenant", "GET", "/v1/quotas/globex", viewer, "", 200, ""},
		{"admin sends for any tenant", "POST", "/v1/events", adminKey, eventJSON("scope-7", "globex", 1), 202, ""},
		{"scope admin", "POST", "/v1/admin/keys", adminKey, `{"tenant":"acme","scope":"admin"}`, 400, "invalid_request"},
		{"scope READ", "POST", "/v1/admin/keys", adminKey, `{"tenant":"acme","scope":"READ"}`, 400, "invalid_request"},
		{"scope on a viewer key", "POST", "/v1/admin/keys", adminKey, `{"role":"viewer","scope":"read"}`, 400, "invalid_request"},
		{"scope without tenant", "POST", "/v1/admin/keys", adminKey, `{"scope":"read"}`, 400, "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(tt.method, tt.path, tt.key, "application/json", tt.body)
			if r.status != tt.status || errorCode(r) != tt.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.raw, tt.status, tt.code)
			}
			if tt.code == "read_only_key" && !strings.Contains(r.raw, "write key") {
				t.Fatalf("the message must say a write key is needed: %s", r.raw)
			}
		})
	}
	if n := len(e.published()); n != 3 {
		t.Fatalf("%d events published, want 3 (the write key's, the plain key's, the admin's)", n)
	}
}

// TestKeysOnlyForExistingTenants: a key for a tenant never created is
// 404 unknown_tenant and writes no row.
func TestKeysOnlyForExistingTenants(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	for _, body := range []string{`{"tenant":"nope"}`, `{"tenant":"nope","scope":"read"}`, `{"tenant":"nope","role":"tenant"}`} {
		r := e.do("POST", "/v1/admin/keys", adminKey, "application/json", body)
		if r.status != 404 || errorCode(r) != "unknown_tenant" || !strings.Contains(r.raw, "PUT /v1/admin/tenants/nope") {
			t.Fatalf("%s: got %d %s, want 404 unknown_tenant naming the route that creates it", body, r.status, r.raw)
		}
	}
	if n := e.countKeys(); n != 0 {
		t.Fatalf("%d key rows written for a tenant that does not exist", n)
	}
	// The schema refuses it too, whoever writes.
	_, err := e.db.Pool.Exec(context.Background(), `INSERT INTO api_keys (id, key_hash, role, tenant, scope)
		VALUES (gen_random_uuid(), '\x00', 'tenant', 'nope', 'write')`)
	if err == nil {
		t.Fatal("Postgres accepted a key for a tenant that does not exist")
	}
	e.do("PUT", "/v1/admin/tenants/nope", adminKey, "application/json", `{}`)
	if r := e.do("POST", "/v1/admin/keys", adminKey, "application/json", `{"tenant":"nope"}`); r.status != 201 {
		t.Fatalf("once the tenant exists: %d %s", r.status, r.raw)
	}
}

// TestDotNamesRefused: "." and ".." are path segments, not tenant or plan
// names, on every admin route and in the schema.
func TestDotNamesRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	tests := []struct{ name, method, path, body string }{
		{"tenant ..", "PUT", "/v1/admin/tenants/%2E%2E", `{}`},
		{"tenant .", "PUT", "/v1/admin/tenants/%2e", `{}`},
		{"get tenant ..", "GET", "/v1/admin/tenants/%2E%2E", ""},
		{"plan ..", "PUT", "/v1/admin/plans/%2E%2E", `{"quotas":[]}`},
		{"plan .", "PUT", "/v1/admin/plans/%2E", `{"quotas":[]}`},
		{"get plan .", "GET", "/v1/admin/plans/%2E", ""},
		{"tenant on plan ..", "PUT", "/v1/admin/tenants/acme", `{"plan":".."}`},
		{"key for tenant ..", "POST", "/v1/admin/keys", `{"tenant":".."}`},
		{"read key for tenant .", "POST", "/v1/admin/keys", `{"tenant":".","scope":"read"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(tt.method, tt.path, adminKey, "application/json", tt.body)
			if r.status != 400 || errorCode(r) != "invalid_request" || !strings.Contains(r.raw, `not \".\" or \"..\"`) {
				t.Fatalf("got %d %s, want 400 invalid_request saying why", r.status, r.raw)
			}
		})
	}
	for _, sql := range []string{`INSERT INTO tenants (tenant) VALUES ('..')`, `INSERT INTO plans (name) VALUES ('.')`} {
		if _, err := e.db.Pool.Exec(context.Background(), sql); err == nil {
			t.Errorf("%s: Postgres accepted it", sql)
		}
	}
	// Names that merely hold dots stay valid.
	if r := e.do("PUT", "/v1/admin/tenants/a..b", adminKey, "application/json", `{}`); r.status != 200 {
		t.Fatalf("tenant a..b: %d %s", r.status, r.raw)
	}
	if r := e.do("PUT", "/v1/admin/plans/.pro", adminKey, "application/json", `{"quotas":[]}`); r.status != 200 {
		t.Fatalf("plan .pro: %d %s", r.status, r.raw)
	}
}

// fastForward moves key id's expiry back by d, as if d had passed.
func (e *env) fastForward(id string, d time.Duration) {
	e.t.Helper()
	e.db.Exec(e.t, `UPDATE api_keys SET expires_at = expires_at - $2::bigint * interval '1 microsecond' WHERE id = $1::uuid`, id, d.Microseconds())
}

// TestKeyExpiry: expires_in or expires_at on create; the key works until
// then and answers 401 expired_key from then on.
func TestKeyExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	id, key := e.createKey(`{"tenant":"acme","expires_in":"1h"}`)
	row := e.keyRow(id)
	exp, err := time.Parse(time.RFC3339Nano, row["expires_at"].(string))
	if err != nil || exp.Before(time.Now().Add(59*time.Minute)) || exp.After(time.Now().Add(61*time.Minute)) {
		t.Fatalf("expires_at %v (%v), want about an hour from now", row["expires_at"], err)
	}
	at := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	atID, atKey := e.createKey(`{"role":"viewer","expires_at":"` + at.Format(time.RFC3339) + `"}`)
	if got := e.keyRow(atID)["expires_at"]; got != at.Format(time.RFC3339) {
		t.Fatalf("expires_at = %v, want %s", got, at.Format(time.RFC3339))
	}
	for _, k := range []string{key, atKey} {
		if r := e.do("GET", "/v1/quotas/acme", k, "", ""); r.status != 200 {
			t.Fatalf("before expiry: %d %s", r.status, r.raw)
		}
	}
	e.fastForward(id, time.Hour)
	e.fastForward(atID, 48*time.Hour)
	for _, k := range []string{key, atKey} {
		for _, req := range [][2]string{{"GET", "/v1/quotas/acme"}, {"POST", "/v1/events"}} {
			r := e.do(req[0], req[1], k, "application/json", eventJSON("exp-1", "acme", 1))
			if r.status != 401 || errorCode(r) != "expired_key" {
				t.Fatalf("%s %s after expiry: %d %s, want 401 expired_key", req[0], req[1], r.status, r.raw)
			}
		}
	}
	bad := []string{
		`{"tenant":"acme","expires_in":"1h","expires_at":"2099-01-01T00:00:00Z"}`,
		`{"tenant":"acme","expires_in":"a month"}`,
		`{"tenant":"acme","expires_in":"-1h"}`,
		`{"tenant":"acme","expires_in":"0s"}`,
		`{"tenant":"acme","expires_at":"2020-01-01T00:00:00Z"}`,
		`{"tenant":"acme","expires_at":"tomorrow"}`,
		// An empty string is not "never": it is refused (null is never).
		`{"role":"viewer","expires_at":"","expires_in":"720h"}`,
		`{"tenant":"acme","expires_at":""}`,
		`{"tenant":"acme","expires_in":""}`,
	}
	for _, body := range bad {
		if r := e.do("POST", "/v1/admin/keys", adminKey, "application/json", body); r.status != 400 || errorCode(r) != "invalid_request" {
			t.Errorf("%s: %d %s, want 400", body, r.status, r.raw)
		}
	}
}

// TestKeyRotation: a rotated key has the old key's role, tenant and
// scope; the old key works during the grace, then answers expired_key; a
// zero grace revokes it at once.
func TestKeyRotation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	oldID, old := e.createKey(`{"tenant":"acme","scope":"read"}`)
	r := e.do("POST", "/v1/admin/keys/"+oldID+"/rotate", adminKey, "application/json", `{"grace":"1h"}`)
	if r.status != 201 || r.body["rotated_from"] != oldID || r.body["scope"] != "read" || r.body["tenant"] != "acme" || r.body["role"] != "tenant" {
		t.Fatalf("rotate: %d %s", r.status, r.raw)
	}
	newID, newKey := r.body["id"].(string), r.body["key"].(string)
	if newKey == old || !strings.HasPrefix(newKey, auth.KeyPrefix) {
		t.Fatalf("new key %q", newKey)
	}
	if row := e.keyRow(newID); row["rotated_from"] != oldID || row["scope"] != "read" {
		t.Fatalf("listed new key: %v", row)
	}
	if row := e.keyRow(oldID); row["expires_at"] == nil || row["revoked_at"] != nil {
		t.Fatalf("old key during the grace: %v", row)
	}
	for _, k := range []string{old, newKey} {
		if r := e.do("GET", "/v1/quotas/acme", k, "", ""); r.status != 200 {
			t.Fatalf("during the grace: %d %s", r.status, r.raw)
		}
	}
	if r := e.do("POST", "/v1/events", newKey, "application/json", eventJSON("rot-1", "acme", 1)); errorCode(r) != "read_only_key" {
		t.Fatalf("the rotated read key wrote: %d %s", r.status, r.raw)
	}
	e.fastForward(oldID, time.Hour)
	if r := e.do("GET", "/v1/quotas/acme", old, "", ""); r.status != 401 || errorCode(r) != "expired_key" {
		t.Fatalf("after the grace: %d %s, want 401 expired_key", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/quotas/acme", newKey, "", ""); r.status != 200 {
		t.Fatalf("new key after the grace: %d %s", r.status, r.raw)
	}

	// Default grace (empty body) is a day; 0s revokes now.
	r = e.do("POST", "/v1/admin/keys/"+newID+"/rotate", adminKey, "", "")
	if r.status != 201 {
		t.Fatalf("rotate, empty body: %d %s", r.status, r.raw)
	}
	exp, _ := time.Parse(time.RFC3339Nano, e.keyRow(newID)["expires_at"].(string))
	if d := time.Until(exp); d < 23*time.Hour || d > 25*time.Hour {
		t.Fatalf("default grace: old key expires in %s, want about 24h", d)
	}
	thirdID, third := r.body["id"].(string), r.body["key"].(string)
	r = e.do("POST", "/v1/admin/keys/"+thirdID+"/rotate", adminKey, "application/json", `{"grace":"0s"}`)
	if r.status != 201 {
		t.Fatalf("rotate, grace 0s: %d %s", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/quotas/acme", third, "", ""); r.status != 401 || errorCode(r) != "unauthorized" {
		t.Fatalf("grace 0s: the old key answers %d %s, want 401 at once", r.status, r.raw)
	}
	tests := []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"revoked key", "/v1/admin/keys/" + thirdID + "/rotate", "", 409, "key_revoked"},
		// Rotating an expired key would bring its access back, and a
		// second rotation of one key would make two live successors.
		{"expired key", "/v1/admin/keys/" + oldID + "/rotate", "", 409, "key_expired"},
		{"key rotated before", "/v1/admin/keys/" + newID + "/rotate", "", 409, "key_rotated"},
		{"unknown key", "/v1/admin/keys/0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8b/rotate", "", 404, "not_found"},
		{"not a UUID", "/v1/admin/keys/nope/rotate", "", 404, "not_found"},
		{"bootstrap", "/v1/admin/keys/bootstrap/rotate", "", 400, "invalid_request"},
		{"negative grace", "/v1/admin/keys/" + newID + "/rotate", `{"grace":"-1h"}`, 400, "invalid_request"},
		{"bad grace", "/v1/admin/keys/" + newID + "/rotate", `{"grace":"a day"}`, 400, "invalid_request"},
		{"unknown field", "/v1/admin/keys/" + newID + "/rotate", `{"grace_period":"1h"}`, 400, "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do("POST", tt.path, adminKey, "application/json", tt.body)
			if r.status != tt.status || errorCode(r) != tt.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.raw, tt.status, tt.code)
			}
		})
	}
	_, acme := e.createKey(`{"tenant":"acme"}`)
	if r := e.do("POST", "/v1/admin/keys/"+newID+"/rotate", acme, "", ""); r.status != 403 {
		t.Fatalf("a tenant key rotated a key: %d %s", r.status, r.raw)
	}
}

// TestLastUsedAt: a key's last use is listed, written at most once a
// minute.
func TestLastUsedAt(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	id, key := e.createKey(`{"tenant":"acme"}`)
	if row := e.keyRow(id); row["last_used_at"] != nil {
		t.Fatalf("an unused key has last_used_at %v", row["last_used_at"])
	}
	e.do("GET", "/v1/quotas/acme", key, "", "")
	first, _ := e.keyRow(id)["last_used_at"].(string)
	if first == "" {
		t.Fatal("last_used_at not set after a request")
	}
	for range 5 {
		e.do("GET", "/v1/quotas/acme", key, "", "")
	}
	if again := e.keyRow(id)["last_used_at"]; again != first {
		t.Fatalf("last_used_at moved within the minute: %s then %v", first, again)
	}
	// Two minutes later as the row says, another replica (its own
	// throttle empty) writes it again.
	e.db.Exec(t, `UPDATE api_keys SET last_used_at = last_used_at - interval '2 minutes' WHERE id = $1::uuid`, id)
	aged, _ := e.keyRow(id)["last_used_at"].(string)
	if r := newAPI(t, e, "").do("GET", "/v1/quotas/acme", key); r != 200 {
		t.Fatalf("second replica: %d", r)
	}
	if got, _ := e.keyRow(id)["last_used_at"].(string); got == aged {
		t.Fatalf("last_used_at not written two minutes after the last write: still %s", got)
	}
}

// TestBootstrapKeyRevocation: DELETE /v1/admin/keys/bootstrap makes every
// service on the database refuse that ADMIN_API_KEY value from the next
// request on, restarts included, while other keys keep working; a new
// value works.
func TestBootstrapKeyRevocation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	_, admin2 := e.createKey(`{"role":"admin"}`)
	_, acme := e.createKey(`{"tenant":"acme"}`)
	st := accounts.New(e.db.Pool)
	biller := auth.New(st, adminKey) // the biller authenticates with the same package and table
	bootstrap := func(a *auth.Authenticator) error {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Authorization", "Bearer "+adminKey)
		_, err := a.Authenticate(context.Background(), r)
		return err
	}
	if err := bootstrap(biller); err != nil {
		t.Fatalf("before: the biller refused the bootstrap key: %v", err)
	}
	if r := e.do("DELETE", "/v1/admin/keys/bootstrap", adminKey, "", ""); r.status != 204 {
		t.Fatalf("revoke bootstrap: %d %s", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/admin/keys", adminKey, "", ""); r.status != 401 || !strings.Contains(r.raw, "ADMIN_API_KEY") {
		t.Fatalf("ingest after the revocation: %d %s, want 401 naming ADMIN_API_KEY", r.status, r.raw)
	}
	if err := bootstrap(biller); !errors.Is(err, auth.ErrRevokedBootstrapKey) {
		t.Fatalf("the biller still takes the revoked bootstrap key: %v", err)
	}
	restarted := newAPI(t, e, adminKey)
	if r := restarted.do("GET", "/v1/admin/keys", adminKey); r != 401 {
		t.Fatalf("ingest restarted with the same value: %d, want 401", r)
	}
	if r := e.do("GET", "/v1/admin/keys", admin2, "", ""); r.status != 200 || !strings.Contains(r.raw, `"bootstrap":true`) {
		t.Fatalf("stored admin key after the revocation: %d %s (the record must be listed)", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/quotas/acme", acme, "", ""); r.status != 200 {
		t.Fatalf("tenant key after the revocation: %d %s", r.status, r.raw)
	}
	if r := e.do("DELETE", "/v1/admin/keys/bootstrap", admin2, "", ""); r.status != 204 {
		t.Fatalf("revoking again: %d %s", r.status, r.raw)
	}
	if r := newAPI(t, e, "a-new-admin-key").do("GET", "/v1/admin/keys", "a-new-admin-key"); r != 200 {
		t.Fatalf("restarted with a new ADMIN_API_KEY: %d, want 200", r)
	}
	if r := newAPI(t, e, "").do("DELETE", "/v1/admin/keys/bootstrap", admin2); r != 404 {
		t.Fatalf("revoking where no ADMIN_API_KEY is set: %d, want 404", r)
	}
}

// api is a second ingest on env's database, as after a restart.
type api struct {
	t   *testing.T
	url string
}

func newAPI(t *testing.T, e *env, bootstrap string) api {
	st := accounts.New(e.db.Pool)
	a := ingest.New(ingest.Options{
		Store: st, Auth: auth.New(st, bootstrap), Usage: usagedata.NewReader(e.db.Pool),
		KeyLimiter: ratelimit.New(1e6, 1e6), IPLimiter: ratelimit.New(1e6, 1e6),
		Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(),
	})
	srv := httptest.NewServer(a.Handler(http.NewServeMux()))
	t.Cleanup(srv.Close)
	return api{t: t, url: srv.URL}
}

func (a api) do(method, path, key string) int {
	a.t.Helper()
	req, _ := http.NewRequest(method, a.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestAdminBodiesRefuseDuplicateFields: an admin body naming a field twice,
// in any case or escaped, is refused with the field named, rather than
// read as whichever copy Go's decoder meets last (a viewer key body that
// also says "Role":"admin" would otherwise make an admin key).
func TestAdminBodiesRefuseDuplicateFields(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.do("PUT", "/v1/admin/plans/free", adminKey, "application/json", `{"quotas":[]}`)
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{}`)
	tests := []struct{ name, method, path, body, field string }{
		{"quotas twice", "PUT", "/v1/admin/plans/x", `{"quotas":[{"metric":"api_calls","limit":1000}],"quotas":[]}`, "quotas"},
		{"limit and LIMIT", "PUT", "/v1/admin/plans/x", `{"quotas":[{"metric":"api_calls","limit":1000,"LIMIT":null,"period":"month"}]}`, "limit"},
		{"escaped limit", "PUT", "/v1/admin/plans/x", `{"quotas":[{"metric":"api_calls","limit":1000,"l\u0069mit":null}]}`, "limit"},
		{"plan and Plan", "PUT", "/v1/admin/tenants/acme", `{"plan":"free","Plan":"gold"}`, "plan"},
		{"role and Role", "POST", "/v1/admin/keys", `{"role":"viewer","Role":"admin"}`, "role"},
		{"scope and SCOPE", "POST", "/v1/admin/keys", `{"tenant":"acme","scope":"read","SCOPE":"write"}`, "scope"},
		{"grace twice", "POST", "/v1/admin/keys/0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8b/rotate", `{"grace":"0s","grace":"24h"}`, "grace"},
	}
	keys := e.countKeys()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(tt.method, tt.path, adminKey, "application/json", tt.body)
			if r.status != 400 || errorCode(r) != "invalid_request" || !strings.Contains(strings.ToLower(r.raw), tt.field) {
				t.Fatalf("got %d %s, want 400 invalid_request naming %q", r.status, r.raw, tt.field)
			}
		})
	}
	if r := e.do("GET", "/v1/admin/plans/x", adminKey, "", ""); r.status != 404 {
		t.Fatalf("a refused plan body was saved: %d %s", r.status, r.raw)
	}
	if n := e.countKeys(); n != keys {
		t.Fatalf("refused key bodies made %d keys", n-keys)
	}
}
