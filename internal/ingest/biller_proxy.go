package ingest

import (
	"net/http"
	"net/http/httputil"
	"time"

	"github.com/usagemeter/metering/internal/httpjson"
)

// billerRoutes are the biller's routes ingest forwards to BILLER_URL, so
// the console reaches them from ingest's address: the reconciliation, the
// billing dead-letter queue and the pushes held on anomalies. The biller authenticates each request
// (the Authorization header goes through as sent).
func (a *API) billerRoutes() []Route {
	h := a.billerProxy()
	return []Route{
		{"GET", "/v1/reconciliation", h},
		{"GET", "/v1/admin/dlq/billing", h},
		{"GET", "/v1/admin/dlq/billing/{id}", h},
		{"POST", "/v1/admin/dlq/billing/{id}/replay", h},
		{"POST", "/v1/admin/dlq/billing/{id}/discard", h},
		{"GET", "/v1/admin/holds", h},
		{"POST", "/v1/admin/holds/{id}/approve", h},
		{"POST", "/v1/admin/holds/{id}/reject", h},
	}
}

// billerProxy forwards a request to the biller at Options.BillerURL: the
// path and query as asked, below the URL's own path. Without a URL it
// answers 503 biller_not_configured; when the biller does not answer, 502
// biller_unavailable (its address only in the log).
func (a *API) billerProxy() http.HandlerFunc {
	target := a.opt.BillerURL
	if target == nil {
		return func(w http.ResponseWriter, r *http.Request) {
			httpjson.Error(w, http.StatusServiceUnavailable, "biller_not_configured",
				"this ingest does not know the biller's address (BILLER_URL); ask the biller directly, or set BILLER_URL")
		}
	}
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
			pr.Out.Host = target.Host
		},
		// Ingest has set its security headers already; the biller's same
		// ones would be written twice.
		ModifyResponse: func(resp *http.Response) error {
			for _, h := range securityHeaders {
				resp.Header.Del(h)
			}
			return nil
		},
		// The reconciliation reads Stripe and may stream a long CSV.
		FlushInterval: 100 * time.Millisecond,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			a.opt.Logger.ErrorContext(r.Context(), "forwarding to the biller", "path", r.URL.Path, "err", err)
			if r.Context().Err() != nil {
				return // the caller left
			}
			httpjson.Error(w, http.StatusBadGateway, "biller_unavailable",
				"the biller did not answer; retry in a minute (ingest's log has the details)")
		},
	}
	return func(w http.ResponseWriter, r *http.Request) {
		// The reconciliation has its own deadline at the biller.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(reconcileProxyTimeout))
		p.ServeHTTP(w, r)
	}
}

// reconcileProxyTimeout bounds a forwarded answer: the biller's own
// deadline for the reconciliation (15 minutes) and a margin.
const reconcileProxyTimeout = 16 * time.Minute

// securityHeaders are the security headers ingest sets on every answer.
// (httpguard.SecurityHeaders).
var securityHeaders = []string{"Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy"}
