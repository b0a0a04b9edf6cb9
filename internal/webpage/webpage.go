// Package webpage serves the services' own HTML pages (the customer usage
// page and the console): one HTML document and its script and styles,
// embedded in the binary, no build step.
//
// Invariant: a page answers with httpguard.PagePolicy (this origin's
// script and styles only, no inline script), and its assets route serves
// exactly app.js and app.css, each with its content type; any other name
// is a JSON 404 that names the page's address. Nothing is cached without
// revalidation, so a new binary's page is never mixed with an old script.
package webpage

import (
	"net/http"

	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/httpjson"
)

// Page is one page and its two assets.
type Page struct {
	HTML, Script, Style []byte
	// Address is how a 404 for an unknown asset names the page, such as
	// "/console".
	Address string
}

// Serve answers the page (its GET route).
func (p Page) Serve(w http.ResponseWriter, _ *http.Request) {
	httpguard.SetHeaders(w.Header(), httpguard.PagePolicy)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(p.HTML)
}

// ServeAsset answers the asset named by the route's {asset} wildcard.
func (p Page) ServeAsset(w http.ResponseWriter, r *http.Request) {
	var body []byte
	var contentType string
	switch r.PathValue("asset") {
	case "app.js":
		body, contentType = p.Script, "text/javascript; charset=utf-8"
	case "app.css":
		body, contentType = p.Style, "text/css; charset=utf-8"
	default:
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no file %s; the page is %s", r.URL.Path, p.Address)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(body)
}
