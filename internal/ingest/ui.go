package ingest

import (
	_ "embed"
	"net/http"

	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/httpjson"
)

// uiPage is the customer usage page: quotas, daily usage charts, the
// projected bill, breach history and conflicting resends of one tenant,
// read with the
// visitor's read-only tenant key from the same API (the key stays in the
// browser). Its script and styles are files of their own, so the page's
// Content-Security-Policy allows no inline script or style.
//
//go:embed ui.html
var uiPage []byte

//go:embed ui.js
var uiScript []byte

//go:embed ui.css
var uiStyle []byte

// uiAssets are the files /ui/{asset} serves, by name.
var uiAssets = map[string]struct {
	contentType string
	body        []byte
}{
	"app.js":  {"text/javascript; charset=utf-8", uiScript},
	"app.css": {"text/css; charset=utf-8", uiStyle},
}

func serveUI(w http.ResponseWriter, r *http.Request) {
	httpguard.SetHeaders(w.Header(), httpguard.PagePolicy)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(uiPage)
}

func serveUIAsset(w http.ResponseWriter, r *http.Request) {
	asset, ok := uiAssets[r.PathValue("asset")]
	if !ok {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no file %s; the usage page is /ui?tenant=<tenant>", r.URL.Path)
		return
	}
	w.Header().Set("Content-Type", asset.contentType)
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(asset.body)
}
