package auth_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/storage/accounts"
)

// downKeys is a KeyStore whose lookups fail, as when Postgres is down.
type downKeys struct{ *memKeys }

func (downKeys) KeyByHash(context.Context, []byte) (accounts.Key, error) {
	return accounts.Key{}, errors.New("connection refused")
}

// TestGate: each way a request can fail the gate gets its status, code and
// headers, and only the roles a route admits reach its handler, with
// their principal.
func TestGate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	a := auth.New(newMemKeys(), "boot", auth.WithClock(func() time.Time { return now }))
	key := func(spec auth.KeySpec) string {
		t.Helper()
		_, secret, err := a.CreateKey(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + secret
	}
	admin := key(auth.KeySpec{Role: accounts.RoleAdmin})
	viewer := key(auth.KeySpec{Role: accounts.RoleViewer})
	tenant := key(auth.KeySpec{Role: accounts.RoleTenant, Tenant: "acme", Scope: accounts.ScopeWrite})
	past := now.Add(-time.Hour)
	expired := key(auth.KeySpec{Role: accounts.RoleAdmin, ExpiresAt: &past})

	gate := auth.Gate{Auth: a}
	down := auth.Gate{Auth: auth.New(downKeys{newMemKeys()}, "")}
	tests := []struct {
		name       string
		gate       auth.Gate
		operator   bool // the route is Operator's, else Admin's
		header     string
		status     int
		code       string
		authHeader string // WWW-Authenticate wanted, or Retry-After for 503
	}{
		{"no key", gate, false, "", 401, "unauthorized", `Bearer realm="metering"`},
		{"unknown key", gate, true, "Bearer mk_nope", 401, "unauthorized", `Bearer realm="metering"`},
		{"expired key", gate, false, expired, 401, "expired_key", `Bearer realm="metering", error="invalid_token"`},
		{"keys cannot be checked", down, false, "Bearer mk_any", 503, "unavailable", ""},
		{"admin on an admin route", gate, false, admin, 200, "", ""},
		{"bootstrap key on an admin route", gate, false, "Bearer boot", 200, "", ""},
		{"viewer on an admin route", gate, false, viewer, 403, "forbidden", ""},
		{"tenant key on an admin route", gate, false, tenant, 403, "forbidden", ""},
		{"admin on an operator route", gate, true, admin, 200, "", ""},
		{"viewer on an operator route", gate, true, viewer, 200, "", ""},
		{"tenant key on an operator route", gate, true, tenant, 403, "forbidden", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var reached *auth.Principal
			h := func(w http.ResponseWriter, _ *http.Request, p auth.Principal) {
				reached = &p
				w.WriteHeader(http.StatusOK)
			}
			route := tt.gate.Admin(h)
			if tt.operator {
				route = tt.gate.Operator(h)
			}
			r := httptest.NewRequest(http.MethodGet, "/v1/admin/x", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			w := httptest.NewRecorder()
			route(w, r)
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tt.status, w.Body)
			}
			if (reached != nil) != (tt.status == 200) {
				t.Fatalf("handler reached: %v, status %d", reached != nil, w.Code)
			}
			if tt.status == 200 {
				if !reached.IsOperator() {
					t.Errorf("principal %+v reached an operator route", *reached)
				}
				return
			}
			if !strings.Contains(w.Body.String(), `"code":"`+tt.code+`"`) {
				t.Errorf("body %s, want code %s", w.Body, tt.code)
			}
			switch tt.status {
			case 401:
				if got := w.Header().Get("WWW-Authenticate"); got != tt.authHeader {
					t.Errorf("WWW-Authenticate %q, want %q", got, tt.authHeader)
				}
			case 503:
				if w.Header().Get("Retry-After") == "" {
					t.Error("503 without Retry-After")
				}
			case 403:
				if !strings.Contains(w.Body.String(), "this key's role is") {
					t.Errorf("403 does not name the role: %s", w.Body)
				}
			}
		})
	}
}
