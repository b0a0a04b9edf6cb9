// Package auth turns a bearer API key into a Principal and decides what
// that principal may do.
//
// Invariant: secrets are never stored, only their SHA-256 (keys are 256
// random bits, so a slow hash adds nothing); every request looks its key
// up afresh, the bootstrap key (ADMIN_API_KEY) included, so a revocation
// or an expiry takes effect on the next request in every service; a
// read-scoped tenant key never writes.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/auditlog"
)

// KeyPrefix starts every key this package makes, so leaked keys are easy
// to recognise in logs and by secret scanners.
const KeyPrefix = "mk_"

// Errors of Authenticate. ErrRevokedBootstrapKey is also ErrUnknownKey.
var (
	ErrNoKey               = errors.New("no API key: send Authorization: Bearer <key>")
	ErrUnknownKey          = errors.New("unknown or revoked API key")
	ErrExpiredKey          = errors.New("this API key has expired; use the key it was rotated to, or ask an admin for a new one")
	ErrRevokedBootstrapKey = fmt.Errorf("%w: this ADMIN_API_KEY value was revoked; use a stored admin key, or restart the services with a new ADMIN_API_KEY", ErrUnknownKey)
)

// ErrNoBootstrapKey is returned by RevokeBootstrap when the service has no
// ADMIN_API_KEY.
var ErrNoBootstrapKey = errors.New("this service has no bootstrap key (ADMIN_API_KEY)")

// BootstrapKeyID is the key id of the ADMIN_API_KEY principal.
const BootstrapKeyID = "bootstrap"

// Principal is the caller of a request.
type Principal struct {
	KeyID  string
	Role   string
	Tenant string // set for tenant keys only
	Scope  string // accounts.ScopeWrite or accounts.ScopeRead, tenant keys only
}

// IsAdmin reports whether p may use the admin routes.
func (p Principal) IsAdmin() bool { return p.Role == accounts.RoleAdmin }

// CanWrite reports whether p may send events for tenant.
func (p Principal) CanWrite(tenant string) bool {
	return p.Role == accounts.RoleAdmin || p.Role == accounts.RoleTenant && p.Scope == accounts.ScopeWrite && p.Tenant == tenant
}

// ReadOnly reports whether p is a tenant key that may only read.
func (p Principal) ReadOnly() bool {
	return p.Role == accounts.RoleTenant && p.Scope != accounts.ScopeWrite
}

// CanRead reports whether p may read tenant's usage and quotas.
func (p Principal) CanRead(tenant string) bool {
	return p.Role == accounts.RoleAdmin || p.Role == accounts.RoleViewer || p.Role == accounts.RoleTenant && p.Tenant == tenant
}

// KeyStore is the storage Authenticator needs.
type KeyStore interface {
	KeyByHash(ctx context.Context, hash []byte) (accounts.Key, error)
	CreateKey(ctx context.Context, k accounts.NewKey) (accounts.Key, error)
	TouchKey(ctx context.Context, id string) error
	RotateKey(ctx context.Context, oldID string, next accounts.NewKey, grace time.Duration) (newKey, oldKey accounts.Key, err error)
	RevokeBootstrapKey(ctx context.Context, id string, hash []byte, by auditlog.By) (accounts.Key, error)
}

// Authenticator checks API keys.
type Authenticator struct {
	keys      KeyStore
	bootstrap []byte // hash of ADMIN_API_KEY, or nil
	log       *slog.Logger
	now       func() time.Time

	rejected      *prometheus.CounterVec
	touchFailures prometheus.Counter

	mu      sync.Mutex
	touched map[string]time.Time // key id -> last last_used_at write tried here
}

// Option configures an Authenticator.
type Option func(*Authenticator)

// WithLogger logs failures to record a key's last use on log.
func WithLogger(log *slog.Logger) Option { return func(a *Authenticator) { a.log = log } }

// WithRegisterer registers the Authenticator's metrics on reg.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(a *Authenticator) {
		if reg != nil {
			reg.MustRegister(a.rejected, a.touchFailures)
		}
	}
}

// WithClock replaces time.Now, for expiry and the last-use throttle.
func WithClock(now func() time.Time) Option { return func(a *Authenticator) { a.now = now } }

// New returns an Authenticator; adminKey (ADMIN_API_KEY) may be empty.
func New(keys KeyStore, adminKey string, opts ...Option) *Authenticator {
	a := &Authenticator{
		keys: keys,
		log:  slog.Default(),
		now:  time.Now,
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metering_auth_rejected_total",
			Help: "Requests refused at authentication, by reason (no_key, unknown, revoked_bootstrap, expired).",
		}, []string{"reason"}),
		touchFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metering_auth_last_used_update_failures_total",
			Help: "Failed writes of an API key's last_used_at (the request itself went on).",
		}),
		touched: map[string]time.Time{},
	}
	if adminKey != "" {
		a.bootstrap = Hash(adminKey)
	}
	for _, o := range opts {
		o(a)
	}
	return a
}

// Hash returns the stored form of a secret.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// BearerToken extracts the key from an Authorization header.
func BearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// Authenticate returns the principal of r's bearer key. A stored key
// that authenticates has its last use recorded (at most once per
// accounts.TouchInterval); a failure to record it is logged and counted,
// never returned.
func (a *Authenticator) Authenticate(ctx context.Context, r *http.Request) (Principal, error) {
	token := BearerToken(r)
	if token == "" {
		a.rejected.WithLabelValues("no_key").Inc()
		return Principal{}, ErrNoKey
	}
	hash := Hash(token)
	k, err := a.keys.KeyByHash(ctx, hash)
	switch {
	case errors.Is(err, accounts.ErrNotFound):
		if a.bootstrap != nil && subtle.ConstantTimeCompare(hash, a.bootstrap) == 1 {
			return Principal{KeyID: BootstrapKeyID, Role: accounts.RoleAdmin}, nil
		}
		a.rejected.WithLabelValues("unknown").Inc()
		return Principal{}, ErrUnknownKey
	case err != nil:
		return Principal{}, fmt.Errorf("authenticating: %w", err)
	case k.Bootstrap:
		a.rejected.WithLabelValues("revoked_bootstrap").Inc()
		return Principal{}, ErrRevokedBootstrapKey
	case k.RevokedAt != nil:
		a.rejected.WithLabelValues("unknown").Inc()
		return Principal{}, ErrUnknownKey
	case k.ExpiresAt != nil && !a.now().Before(*k.ExpiresAt):
		a.rejected.WithLabelValues("expired").Inc()
		return Principal{}, ErrExpiredKey
	}
	a.touch(ctx, k)
	return Principal{KeyID: k.ID, Role: k.Role, Tenant: k.Tenant, Scope: k.Scope}, nil
}

// touch records k's use unless this process or the stored row says it
// was recorded less than accounts.TouchInterval ago, so a hot key writes
// about once a minute, not once a request.
func (a *Authenticator) touch(ctx context.Context, k accounts.Key) {
	now := a.now()
	if k.LastUsedAt != nil && now.Sub(*k.LastUsedAt) < accounts.TouchInterval {
		return
	}
	a.mu.Lock()
	if last, ok := a.touched[k.ID]; ok && now.Sub(last) < accounts.TouchInterval {
		a.mu.Unlock()
		return
	}
	if len(a.touched) >= 10000 { // forget what no longer throttles anything
		for id, t := range a.touched {
			if now.Sub(t) >= accounts.TouchInterval {
				delete(a.touched, id)
			}
		}
	}
	a.touched[k.ID] = now
	a.mu.Unlock()
	// The request goes on whatever happens here; a cancelled request
	// still gets its use recorded.
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := a.keys.TouchKey(tctx, k.ID); err != nil {
		a.touchFailures.Inc()
		a.log.WarnContext(ctx, "could not record the last use of an API key", "key_id", k.ID, "err", err)
	}
}

// KeySpec is what a new key may do.
type KeySpec struct {
	Role      string
	Tenant    string     // tenant keys only
	Scope     string     // tenant keys only: accounts.ScopeWrite or accounts.ScopeRead
	ExpiresAt *time.Time // nil: never expires
	// By is who creates the key, audited with it (the zero By: unaudited).
	By auditlog.By
}

func newSecret() (id, secret string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("generating key: %w", err)
	}
	u, err := uuid.NewV7()
	if err != nil {
		return "", "", fmt.Errorf("generating key id: %w", err)
	}
	return u.String(), KeyPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// CreateKey makes a new key and returns its record and the secret, which
// is not stored anywhere.
func (a *Authenticator) CreateKey(ctx context.Context, spec KeySpec) (accounts.Key, string, error) {
	id, secret, err := newSecret()
	if err != nil {
		return accounts.Key{}, "", err
	}
	k, err := a.keys.CreateKey(ctx, accounts.NewKey{ID: id, Hash: Hash(secret), Role: spec.Role, Tenant: spec.Tenant, Scope: spec.Scope, ExpiresAt: spec.ExpiresAt, By: spec.By})
	if err != nil {
		return accounts.Key{}, "", err
	}
	return k, secret, nil
}

// RotateKey makes a key with the role, tenant and scope of key oldID and
// returns it with its secret, and the old key as it now is: valid until
// now + grace, or revoked when grace is 0. expiresAt is the new key's
// expiry (nil: none); by is audited as the rotation's author.
func (a *Authenticator) RotateKey(ctx context.Context, oldID string, grace time.Duration, expiresAt *time.Time, by auditlog.By) (newKey accounts.Key, secret string, oldKey accounts.Key, err error) {
	id, secret, err := newSecret()
	if err != nil {
		return accounts.Key{}, "", accounts.Key{}, err
	}
	newKey, oldKey, err = a.keys.RotateKey(ctx, oldID, accounts.NewKey{ID: id, Hash: Hash(secret), ExpiresAt: expiresAt, By: by}, grace)
	if err != nil {
		return accounts.Key{}, "", accounts.Key{}, err
	}
	return newKey, secret, oldKey, nil
}

// RevokeBootstrap records that this service's ADMIN_API_KEY value is
// revoked, so every service sharing the database refuses it from the next
// request on, restarts included; by is audited as the revocation's
// author.
func (a *Authenticator) RevokeBootstrap(ctx context.Context, by auditlog.By) (accounts.Key, error) {
	if a.bootstrap == nil {
		return accounts.Key{}, ErrNoBootstrapKey
	}
	u, err := uuid.NewV7()
	if err != nil {
		return accounts.Key{}, fmt.Errorf("generating key id: %w", err)
	}
	return a.keys.RevokeBootstrapKey(ctx, u.String(), a.bootstrap, by)
}
