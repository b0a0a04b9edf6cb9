package auth

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/storage/accounts"
)

// Handler is an HTTP handler given the principal of its request.
type Handler func(http.ResponseWriter, *http.Request, Principal)

// Gate is the HTTP side of an Authenticator, the same in every service: a
// request without a usable key is answered 401 (with a WWW-Authenticate
// challenge), one whose key cannot be checked right now 503 (with
// Retry-After: the caller is not at fault), and one whose key's role may
// not use the route 403, naming the role.
type Gate struct {
	Auth *Authenticator
	// Log receives the errors that make a 503; nil discards them.
	Log *slog.Logger
}

// Principal authenticates r, or answers 401 or 503 and returns false.
func (g Gate) Principal(w http.ResponseWriter, r *http.Request) (Principal, bool) {
	p, err := g.Auth.Authenticate(r.Context(), r)
	switch {
	case err == nil:
		return p, true
	case errors.Is(err, ErrExpiredKey):
		w.Header().Set("WWW-Authenticate", `Bearer realm="metering", error="invalid_token"`)
		httpjson.Error(w, http.StatusUnauthorized, "expired_key", err.Error())
	case errors.Is(err, ErrNoKey), errors.Is(err, ErrUnknownKey):
		w.Header().Set("WWW-Authenticate", `Bearer realm="metering"`)
		httpjson.Error(w, http.StatusUnauthorized, "unauthorized", err.Error())
	default:
		if g.Log != nil {
			g.Log.ErrorContext(r.Context(), "authenticating request", "err", err)
		}
		w.Header().Set("Retry-After", "5")
		httpjson.Error(w, http.StatusServiceUnavailable, "unavailable", "cannot check the API key right now; retry shortly")
	}
	return Principal{}, false
}

// Admin admits admin keys only.
func (g Gate) Admin(h Handler) http.HandlerFunc {
	return g.require(Principal.IsAdmin, "an admin key", h)
}

// Operator admits admin and viewer keys: the read-only admin routes (a
// viewer sees everything an admin sees and changes nothing).
func (g Gate) Operator(h Handler) http.HandlerFunc {
	return g.require(Principal.IsOperator, "an admin or viewer key", h)
}

func (g Gate) require(may func(Principal) bool, needs string, h Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := g.Principal(w, r)
		if !ok {
			return
		}
		if !may(p) {
			httpjson.Error(w, http.StatusForbidden, "forbidden", "this route needs "+needs+"; this key's role is "+p.Role)
			return
		}
		h(w, r, p)
	}
}

// IsOperator reports whether p may read the admin routes: an admin or a
// viewer key.
func (p Principal) IsOperator() bool {
	return p.Role == accounts.RoleAdmin || p.Role == accounts.RoleViewer
}
