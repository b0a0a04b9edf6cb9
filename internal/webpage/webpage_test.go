package webpage_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/webpage"
)

// TestPage: the page carries the page policy, each asset its type, and an
// unknown asset is a 404 naming the page; nothing is cached unchecked.
func TestPage(t *testing.T) {
	t.Parallel()
	p := webpage.Page{HTML: []byte("<p>hi</p>"), Script: []byte("js()"), Style: []byte("p{}"), Address: "/console"}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /console", p.Serve)
	mux.HandleFunc("GET /console/{asset}", p.ServeAsset)
	tests := []struct {
		path                      string
		status                    int
		contentType, body, policy string
	}{
		{"/console", 200, "text/html; charset=utf-8", "<p>hi</p>", httpguard.PagePolicy},
		{"/console/app.js", 200, "text/javascript; charset=utf-8", "js()", ""},
		{"/console/app.css", 200, "text/css; charset=utf-8", "p{}", ""},
		{"/console/ui.html", 404, "application/json", "the page is /console", ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			w := httptest.NewRecorder()
			mux.ServeHTTP(w, httptest.NewRequest(http.MethodGet, tt.path, nil))
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d", w.Code, tt.status)
			}
			if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, tt.contentType) {
				t.Errorf("Content-Type %q, want %q", ct, tt.contentType)
			}
			if !strings.Contains(w.Body.String(), tt.body) {
				t.Errorf("body %q, want %q in it", w.Body, tt.body)
			}
			if tt.policy != "" && w.Header().Get("Content-Security-Policy") != tt.policy {
				t.Errorf("policy %q", w.Header().Get("Content-Security-Policy"))
			}
			if w.Code == 200 && w.Header().Get("Cache-Control") != "no-cache" {
				t.Errorf("Cache-Control %q", w.Header().Get("Cache-Control"))
			}
		})
	}
}
