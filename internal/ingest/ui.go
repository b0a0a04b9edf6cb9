package ingest

import (
	_ "embed"
	"net/http"
)

// uiPage is the customer usage page: quotas, daily usage charts, the
// projected bill and breach history of one tenant, read with the
// visitor's API key from the same API (the key stays in the browser).
//
//go:embed ui.html
var uiPage []byte

func serveUI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(uiPage)
}
