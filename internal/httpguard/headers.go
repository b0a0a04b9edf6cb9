// Package httpguard holds the HTTP defences the services share: the
// security headers of every answer, and request bodies read (and gzip or
// zstd decoded) within a size limit, with a cap on the large ones held at
// once.
//
// Invariants: a handler wrapped by SecurityHeaders answers with
// X-Content-Type-Options: nosniff, X-Frame-Options: DENY,
// Referrer-Policy: no-referrer and a Content-Security-Policy that forbids
// framing and inline script (a page may swap in PagePolicy, which keeps
// both rules). Body.Read never reads more than the limit from the
// connection nor decodes more than the limit plus one byte, and at most
// MaxLarge bodies above LargeBytes are held at once.
package httpguard

import (
	"net/http"
	"strings"
)

// APIPolicy is the Content-Security-Policy of every answer that is not a
// page: nothing may load, run or frame it.
const APIPolicy = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// PagePolicy is the Content-Security-Policy of the service's own HTML
// pages: scripts, styles and requests from the same origin only (no inline
// script or style, no eval), never framed.
const PagePolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// SecurityHeaders sets the security headers on every answer of next
// before next runs; next may replace the policy with PagePolicy.
func SecurityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		SetHeaders(w.Header(), APIPolicy)
		next.ServeHTTP(w, r)
	})
}

// SetHeaders sets the security headers with Content-Security-Policy
// policy on h.
func SetHeaders(h http.Header, policy string) {
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", policy)
}

// Missing returns the security headers h lacks or weakens, as
// "header: why"; empty when h carries them all. Tests of every service use
// it over their route lists.
func Missing(h http.Header) []string {
	var out []string
	want := map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
	for k, v := range want {
		if got := h.Get(k); !strings.EqualFold(got, v) {
			out = append(out, k+": got "+quote(got)+", want "+v)
		}
	}
	csp := h.Get("Content-Security-Policy")
	directives := map[string]string{}
	for d := range strings.SplitSeq(csp, ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
		if name != "" {
			directives[strings.ToLower(name)] = value
		}
	}
	if directives["frame-ancestors"] != "'none'" {
		out = append(out, "Content-Security-Policy: no frame-ancestors 'none' in "+quote(csp))
	}
	script, ok := directives["script-src"]
	if !ok {
		script, ok = directives["default-src"]
	}
	if !ok || strings.Contains(script, "'unsafe-inline'") || strings.Contains(script, "'unsafe-eval'") || strings.Contains(script, "*") {
		out = append(out, "Content-Security-Policy: script-src must be 'self' or 'none' without unsafe-inline, got "+quote(csp))
	}
	return out
}

func quote(s string) string { return `"` + s + `"` }
