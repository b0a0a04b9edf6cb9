package ingest

import (
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/usagemeter/metering/internal/console"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/windows"
)

// consoleRoutes are the operator and finance console (/console) and the
// routes it needs besides the admin and read routes: who a key is, a
// month's pushes of a tenant, the usage dead letters, and the biller's
// routes forwarded.
func (a *API) consoleRoutes() []Route {
	return slices.Concat([]Route{
		{"GET", "/console", console.Page().Serve},
		{"GET", "/console/{asset}", console.Page().ServeAsset},
		{"GET", "/v1/whoami", a.whoami},
		{"GET", "/v1/lineage/pushes", a.reader(func(r *http.Request) string { return r.URL.Query().Get("tenant") }, a.listPushes)},
	}, a.dlqRoutes(), a.billerRoutes())
}

// whoami serves GET /v1/whoami: the key's role, and tenant and scope for
// a tenant key. It leaves the key's id out, so nothing reads it as a key
// to revoke (the bootstrap key's id is "bootstrap").
func (a *API) whoami(w http.ResponseWriter, r *http.Request) {
	p, ok := a.gate.Principal(w, r)
	if !ok {
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"role": p.Role, "tenant": p.Tenant, "scope": p.Scope})
}

// pushSummary is one push of a month, as GET /v1/lineage/pushes lists it.
type pushSummary struct {
	Identifier string    `json:"identifier"`
	Tenant     string    `json:"tenant"`
	Metric     string    `json:"metric"`
	Group      string    `json:"group"`
	Delta      string    `json:"delta"`
	Status     string    `json:"status"`
	Created    time.Time `json:"created_at"`
	Updated    time.Time `json:"updated_at"`
	Lineage    string    `json:"lineage"`
}

// listPushes serves GET /v1/lineage/pushes?tenant=&period=&metric=: the
// pushes to Stripe of a tenant's month (of one metric or meter when
// metric is set), oldest first, each with its lineage's URL.
func (a *API) listPushes(w http.ResponseWriter, r *http.Request, tenant string) {
	q := r.URL.Query()
	period := windows.Month.Start(a.opt.Now())
	if s := q.Get("period"); s != "" {
		t, err := time.Parse("2006-01", s)
		if err != nil {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "period must be YYYY-MM, such as 2026-11; got %q", s)
			return
		}
		period = t.UTC()
	}
	pushes, err := billingdata.PeriodPushes(r.Context(), a.opt.DB, tenant, period)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	metric := q.Get("metric")
	out := []pushSummary{}
	for _, p := range pushes {
		if metric != "" && p.Metric != metric {
			continue
		}
		out = append(out, pushSummary{Identifier: p.Identifier, Tenant: p.Tenant, Metric: p.Metric, Group: p.GroupKey, Delta: p.Delta,
			Status: p.Status, Created: p.Created, Updated: p.Updated, Lineage: "/v1/lineage/pushes/" + url.PathEscape(p.Identifier)})
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenant": tenant, "period": period.Format("2006-01"), "pushes": out})
}
