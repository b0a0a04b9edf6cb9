// Package console is the operator and finance console that ingest serves
// at /console: tenants and plans, the reconciliation of a month with its
// CSV and a drill-down to pushes, windows and events, both dead-letter
// queues, breaches, usage anomalies, each tenant's webhook endpoints and
// their deliveries, and the audit log. It is three embedded files (HTML,
// script, styles): no external asset and no build step.
//
// Invariant: the page's Content-Security-Policy (httpguard.PagePolicy)
// allows only this origin's script and styles and no inline script, and
// the script writes data into the page as text nodes only, so nothing a
// tenant, an event or a dead letter holds can run in the console. The key
// lives in the tab's sessionStorage and travels only in the Authorization
// header, never in a URL.
package console

import (
	_ "embed"
	"net/http"

	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/httpjson"
)

//go:embed console.html
var page []byte

//go:embed console.js
var script []byte

//go:embed console.css
var style []byte

// assets are the files /console/{asset} serves, by name.
var assets = map[string]struct {
	contentType string
	body        []byte
}{
	"app.js":  {"text/javascript; charset=utf-8", script},
	"app.css": {"text/css; charset=utf-8", style},
}

// Page serves the console's HTML page (GET /console).
func Page(w http.ResponseWriter, _ *http.Request) {
	httpguard.SetHeaders(w.Header(), httpguard.PagePolicy)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(page)
}

// Asset serves the console's script and styles (GET /console/{asset}).
func Asset(w http.ResponseWriter, r *http.Request) {
	asset, ok := assets[r.PathValue("asset")]
	if !ok {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no file %s; the console is /console", r.URL.Path)
		return
	}
	w.Header().Set("Content-Type", asset.contentType)
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(asset.body)
}
