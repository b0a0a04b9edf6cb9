package auth_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/auditlog"
)

func TestPermissions(t *testing.T) {
	t.Parallel()
	write := auth.Principal{Role: accounts.RoleTenant, Tenant: "acme", Scope: accounts.ScopeWrite}
	read := auth.Principal{Role: accounts.RoleTenant, Tenant: "acme", Scope: accounts.ScopeRead}
	admin := auth.Principal{Role: accounts.RoleAdmin}
	viewer := auth.Principal{Role: accounts.RoleViewer}
	tests := []struct {
		name                           string
		p                              auth.Principal
		target                         string
		write, read, isAdmin, readOnly bool
	}{
		{"tenant write key, own", write, "acme", true, true, false, false},
		{"tenant write key, other", write, "globex", false, false, false, false},
		{"tenant read key, own", read, "acme", false, true, false, true},
		{"tenant read key, other", read, "globex", false, false, false, true},
		{"tenant key without a scope writes nothing", auth.Principal{Role: accounts.RoleTenant, Tenant: "acme"}, "acme", false, true, false, true},
		{"admin", admin, "globex", true, true, true, false},
		{"viewer", viewer, "acme", false, true, false, false},
		{"no role", auth.Principal{Tenant: "acme"}, "acme", false, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.p.CanWrite(tt.target); got != tt.write {
				t.Errorf("CanWrite = %v", got)
			}
			if got := tt.p.CanRead(tt.target); got != tt.read {
				t.Errorf("CanRead = %v", got)
			}
			if got := tt.p.IsAdmin(); got != tt.isAdmin {
				t.Errorf("IsAdmin = %v", got)
			}
			if got := tt.p.ReadOnly(); got != tt.readOnly {
				t.Errorf("ReadOnly = %v", got)
			}
		})
	}
}

// memKeys is a KeyStore in memory; touchErr makes TouchKey fail.
type memKeys struct {
	mu       sync.Mutex
	byHash   map[string]accounts.Key
	touches  int
	touchErr error
}

func newMemKeys() *memKeys { return &memKeys{byHash: map[string]accounts.Key{}} }

func (m *memKeys) KeyByHash(_ context.Context, h []byte) (accounts.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := m.byHash[string(h)]; ok {
		return k, nil
	}
	return accounts.Key{}, accounts.ErrNotFound
}

func (m *memKeys) CreateKey(_ context.Context, nk accounts.NewKey) (accounts.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := accounts.Key{ID: nk.ID, Role: nk.Role, Tenant: nk.Tenant, Scope: nk.Scope, ExpiresAt: nk.ExpiresAt}
	m.byHash[string(nk.Hash)] = k
	return k, nil
}

func (m *memKeys) TouchKey(context.Context, string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.touches++
	return m.touchErr
}

func (m *memKeys) RotateKey(context.Context, string, accounts.NewKey, time.Duration) (accounts.Key, accounts.Key, error) {
	return accounts.Key{}, accounts.Key{}, errors.New("not used")
}

func (m *memKeys) RevokeBootstrapKey(_ context.Context, id string, h []byte, _ auditlog.By) (accounts.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	k := accounts.Key{ID: id, Role: accounts.RoleAdmin, Bootstrap: true, RevokedAt: &now}
	m.byHash[string(h)] = k
	return k, nil
}

// set changes the stored key with hash of secret.
func (m *memKeys) set(secret string, f func(*accounts.Key)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.byHash[string(auth.Hash(secret))]
	f(&k)
	m.byHash[string(auth.Hash(secret))] = k
}

func authenticate(a *auth.Authenticator, header string) (auth.Principal, error) {
	r, _ := http.NewRequest("GET", "/", nil)
	if header != "" {
		r.Header.Set("Authorization", header)
	}
	return a.Authenticate(context.Background(), r)
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	keys := newMemKeys()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	a := auth.New(keys, "boot", auth.WithClock(func() time.Time { return now }))
	ctx := context.Background()
	k, secret, err := a.CreateKey(ctx, auth.KeySpec{Role: accounts.RoleTenant, Tenant: "acme", Scope: accounts.ScopeWrite})
	if err != nil || len(secret) < 40 || secret[:3] != auth.KeyPrefix {
		t.Fatalf("CreateKey = %q, %v", secret, err)
	}
	rk, readSecret, _ := a.CreateKey(ctx, auth.KeySpec{Role: accounts.RoleTenant, Tenant: "acme", Scope: accounts.ScopeRead})
	soon := now.Add(time.Minute)
	ek, expiringSecret, _ := a.CreateKey(ctx, auth.KeySpec{Role: accounts.RoleViewer, ExpiresAt: &soon})
	past := now
	_, expiredSecret, _ := a.CreateKey(ctx, auth.KeySpec{Role: accounts.RoleAdmin, ExpiresAt: &past})
	_, revokedSecret, _ := a.CreateKey(ctx, auth.KeySpec{Role: accounts.RoleAdmin})
	keys.set(revokedSecret, func(k *accounts.Key) { k.RevokedAt = &past })
	tests := []struct {
		header string
		want   auth.Principal
		err    error
	}{
		{"", auth.Principal{}, auth.ErrNoKey},
		{"Basic abc", auth.Principal{}, auth.ErrNoKey},
		{"Bearer nope", auth.Principal{}, auth.ErrUnknownKey},
		{"Bearer boot", auth.Principal{KeyID: auth.BootstrapKeyID, Role: accounts.RoleAdmin}, nil},
		{"bearer " + secret, auth.Principal{KeyID: k.ID, Role: accounts.RoleTenant, Tenant: "acme", Scope: accounts.ScopeWrite}, nil},
		{"Bearer " + readSecret, auth.Principal{KeyID: rk.ID, Role: accounts.RoleTenant, Tenant: "acme", Scope: accounts.ScopeRead}, nil},
		{"Bearer " + expiringSecret, auth.Principal{KeyID: ek.ID, Role: accounts.RoleViewer}, nil},
		{"Bearer " + expiredSecret, auth.Principal{}, auth.ErrExpiredKey},
		{"Bearer " + revokedSecret, auth.Principal{}, auth.ErrUnknownKey},
	}
	for _, tt := range tests {
		p, err := authenticate(a, tt.header)
		if !errors.Is(err, tt.err) || p != tt.want {
			t.Errorf("%q: %+v, %v; want %+v, %v", tt.header, p, err, tt.want, tt.err)
		}
	}
	for h := range keys.byHash {
		if h == secret || h == readSecret {
			t.Fatal("the secret itself was stored")
		}
	}
}

// TestBootstrapKeyRevocable: once RevokeBootstrap recorded the hash of
// ADMIN_API_KEY, every Authenticator on the same store (another service,
// or this one after a restart) refuses that value; a new value works.
func TestBootstrapKeyRevocable(t *testing.T) {
	t.Parallel()
	keys := newMemKeys()
	ingest, biller := auth.New(keys, "boot"), auth.New(keys, "boot")
	if _, err := auth.New(keys, "").RevokeBootstrap(context.Background(), auditlog.By{}); !errors.Is(err, auth.ErrNoBootstrapKey) {
		t.Fatalf("revoking without ADMIN_API_KEY: %v", err)
	}
	if _, err := ingest.RevokeBootstrap(context.Background(), auditlog.By{}); err != nil {
		t.Fatal(err)
	}
	restarted := auth.New(keys, "boot")
	for name, a := range map[string]*auth.Authenticator{"ingest": ingest, "biller": biller, "restarted": restarted} {
		if _, err := authenticate(a, "Bearer boot"); !errors.Is(err, auth.ErrRevokedBootstrapKey) || !errors.Is(err, auth.ErrUnknownKey) {
			t.Errorf("%s: revoked bootstrap key: %v", name, err)
		}
	}
	if p, err := authenticate(auth.New(keys, "boot2"), "Bearer boot2"); err != nil || !p.IsAdmin() {
		t.Fatalf("a new ADMIN_API_KEY value: %+v, %v", p, err)
	}
}

// TestLastUsedThrottled: a key's use is written once per minute however
// many requests it makes, and a failed write never fails the request.
func TestLastUsedThrottled(t *testing.T) {
	t.Parallel()
	keys := newMemKeys()
	keys.touchErr = errors.New("postgres is down")
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	reg := prometheus.NewRegistry()
	a := auth.New(keys, "", auth.WithRegisterer(reg), auth.WithClock(func() time.Time { mu.Lock(); defer mu.Unlock(); return now }))
	_, secret, _ := a.CreateKey(context.Background(), auth.KeySpec{Role: accounts.RoleViewer})
	for range 100 {
		if _, err := authenticate(a, "Bearer "+secret); err != nil {
			t.Fatalf("a failed last-use write failed the request: %v", err)
		}
	}
	if keys.touches != 1 {
		t.Fatalf("100 requests in one instant wrote last_used_at %d times, want 1", keys.touches)
	}
	mu.Lock()
	now = now.Add(accounts.TouchInterval)
	mu.Unlock()
	_, _ = authenticate(a, "Bearer "+secret)
	if keys.touches != 2 {
		t.Fatalf("a minute later: %d writes, want 2", keys.touches)
	}
	if got := counter(t, reg, "metering_auth_last_used_update_failures_total"); got != 2 {
		t.Fatalf("metering_auth_last_used_update_failures_total = %v, want 2", got)
	}
	// A row that says it was used within the minute is not written again.
	keys.touchErr = nil
	mu.Lock()
	now = now.Add(accounts.TouchInterval)
	recent := now.Add(-time.Second)
	mu.Unlock()
	keys.set(secret, func(k *accounts.Key) { k.LastUsedAt = &recent })
	_, _ = authenticate(a, "Bearer "+secret)
	if keys.touches != 2 {
		t.Fatalf("stored last_used_at within the minute: %d writes, want 2", keys.touches)
	}
}

// counter returns the value of the unlabelled counter name in reg.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
