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

	"github.com/usagemeter/metering/internal/webpage"
)

//go:embed console.html
var page []byte

//go:embed console.js
var script []byte

//go:embed console.css
var style []byte

// Page is the console: GET /console serves it, GET /console/{asset} its
// script and styles.
func Page() webpage.Page {
	return webpage.Page{HTML: page, Script: script, Style: style, Address: "/console"}
}
