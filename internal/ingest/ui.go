package ingest

import (
	_ "embed"

	"github.com/usagemeter/metering/internal/webpage"
)

// The customer usage page: quotas, daily usage charts, the projected
// bill, breach history and conflicting resends of one tenant, read with
// the visitor's read-only tenant key from the same API (the key stays in
// the browser).
var (
	//go:embed ui.html
	uiPage []byte
	//go:embed ui.js
	uiScript []byte
	//go:embed ui.css
	uiStyle []byte
)

// usagePage is the customer usage page (GET /ui, GET /ui/{asset}).
func usagePage() webpage.Page {
	return webpage.Page{HTML: uiPage, Script: uiScript, Style: uiStyle, Address: "/ui?tenant=<tenant>"}
}
