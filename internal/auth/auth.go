// Package auth turns a bearer API key into a Principal and decides what
// that principal may do.
//
// Invariant: secrets are never stored, only their SHA-256 (keys are 256
// random bits, so a slow hash adds nothing); every request looks its key
// up afresh, so a revocation takes effect on the next request.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/internal/store"
)

// KeyPrefix starts every key this package makes, so leaked keys are easy
// to recognise in logs and by secret scanners.
const KeyPrefix = "mk_"

// Errors of Authenticate.
var (
	ErrNoKey      = errors.New("no API key: send Authorization: Bearer <key>")
	ErrUnknownKey = errors.New("unknown or revoked API key")
)

// BootstrapKeyID is the key id of the ADMIN_API_KEY principal.
const BootstrapKeyID = "bootstrap"

// Principal is the caller of a request.
type Principal struct {
	KeyID  string
	Role   string
	Tenant string // set for tenant keys only
}

// IsAdmin reports whether p may use the admin routes.
func (p Principal) IsAdmin() bool { return p.Role == store.RoleAdmin }

// CanWrite reports whether p may send events for tenant.
func (p Principal) CanWrite(tenant string) bool {
	return p.Role == store.RoleAdmin || p.Role == store.RoleTenant && p.Tenant == tenant
}

// CanRead reports whether p may read tenant's usage and quotas.
func (p Principal) CanRead(tenant string) bool {
	return p.Role == store.RoleAdmin || p.Role == store.RoleViewer || p.Tenant == tenant
}

// KeyStore is the storage Authenticator needs.
type KeyStore interface {
	KeyByHash(ctx context.Context, hash []byte) (store.Key, error)
	CreateKey(ctx context.Context, id string, hash []byte, role, tenant string) (store.Key, error)
}

// Authenticator checks API keys.
type Authenticator struct {
	keys      KeyStore
	bootstrap []byte // hash of ADMIN_API_KEY, or nil
}

// New returns an Authenticator; adminKey (ADMIN_API_KEY) may be empty.
func New(keys KeyStore, adminKey string) *Authenticator {
	a := &Authenticator{keys: keys}
	if adminKey != "" {
		a.bootstrap = Hash(adminKey)
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

// Authenticate returns the principal of r's bearer key.
func (a *Authenticator) Authenticate(ctx context.Context, r *http.Request) (Principal, error) {
	token := BearerToken(r)
	if token == "" {
		return Principal{}, ErrNoKey
	}
	hash := Hash(token)
	if a.bootstrap != nil && subtle.ConstantTimeCompare(hash, a.bootstrap) == 1 {
		return Principal{KeyID: BootstrapKeyID, Role: store.RoleAdmin}, nil
	}
	k, err := a.keys.KeyByHash(ctx, hash)
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, ErrUnknownKey
	}
	if err != nil {
		return Principal{}, fmt.Errorf("authenticating: %w", err)
	}
	return Principal{KeyID: k.ID, Role: k.Role, Tenant: k.Tenant}, nil
}

// CreateKey makes a new key for role (and tenant, for tenant keys) and
// returns its record and the secret, which is not stored anywhere.
func (a *Authenticator) CreateKey(ctx context.Context, role, tenant string) (store.Key, string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return store.Key{}, "", fmt.Errorf("generating key: %w", err)
	}
	secret := KeyPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	id, err := uuid.NewV7()
	if err != nil {
		return store.Key{}, "", fmt.Errorf("generating key id: %w", err)
	}
	k, err := a.keys.CreateKey(ctx, id.String(), Hash(secret), role, tenant)
	if err != nil {
		return store.Key{}, "", err
	}
	return k, secret, nil
}
