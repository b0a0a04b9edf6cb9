package auth_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/store"
)

func TestPermissions(t *testing.T) {
	tenant := auth.Principal{Role: store.RoleTenant, Tenant: "acme"}
	admin := auth.Principal{Role: store.RoleAdmin}
	viewer := auth.Principal{Role: store.RoleViewer}
	tests := []struct {
		name                 string
		p                    auth.Principal
		target               string
		write, read, isAdmin bool
	}{
		{"tenant, own", tenant, "acme", true, true, false},
		{"tenant, other", tenant, "globex", false, false, false},
		{"admin", admin, "globex", true, true, true},
		{"viewer", viewer, "acme", false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.CanWrite(tt.target); got != tt.write {
				t.Errorf("CanWrite = %v", got)
			}
			if got := tt.p.CanRead(tt.target); got != tt.read {
				t.Errorf("CanRead = %v", got)
			}
			if got := tt.p.IsAdmin(); got != tt.isAdmin {
				t.Errorf("IsAdmin = %v", got)
			}
		})
	}
}

type memKeys map[string]store.Key

func (m memKeys) KeyByHash(_ context.Context, h []byte) (store.Key, error) {
	if k, ok := m[string(h)]; ok {
		return k, nil
	}
	return store.Key{}, store.ErrNotFound
}

func (m memKeys) CreateKey(_ context.Context, id string, h []byte, role, tenant string) (store.Key, error) {
	k := store.Key{ID: id, Role: role, Tenant: tenant}
	m[string(h)] = k
	return k, nil
}

func TestAuthenticate(t *testing.T) {
	keys := memKeys{}
	a := auth.New(keys, "boot")
	k, secret, err := a.CreateKey(context.Background(), store.RoleTenant, "acme")
	if err != nil || len(secret) < 40 || secret[:3] != auth.KeyPrefix {
		t.Fatalf("CreateKey = %q, %v", secret, err)
	}
	tests := []struct {
		header string
		want   auth.Principal
		err    error
	}{
		{"", auth.Principal{}, auth.ErrNoKey},
		{"Basic abc", auth.Principal{}, auth.ErrNoKey},
		{"Bearer nope", auth.Principal{}, auth.ErrUnknownKey},
		{"Bearer boot", auth.Principal{KeyID: auth.BootstrapKeyID, Role: store.RoleAdmin}, nil},
		{"bearer " + secret, auth.Principal{KeyID: k.ID, Role: store.RoleTenant, Tenant: "acme"}, nil},
	}
	for _, tt := range tests {
		r, _ := http.NewRequest("GET", "/", nil)
		if tt.header != "" {
			r.Header.Set("Authorization", tt.header)
		}
		p, err := a.Authenticate(context.Background(), r)
		if !errors.Is(err, tt.err) || p != tt.want {
			t.Errorf("%q: %+v, %v; want %+v, %v", tt.header, p, err, tt.want, tt.err)
		}
	}
	if _, ok := keys[secret]; ok {
		t.Fatal("the secret itself was stored")
	}
}
