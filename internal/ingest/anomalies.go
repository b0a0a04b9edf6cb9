package ingest

import (
	"net/http"
	"strconv"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/storage/anomalydata"
)

// maxAnomalies bounds one GET /v1/anomalies answer; defaultAnomalies is
// its length when limit is not given.
const (
	maxAnomalies     = 1000
	defaultAnomalies = 200
)

// getAnomalies answers GET /v1/anomalies?tenant=&meter=&from=&to=&limit=:
// the usage anomaly episodes whose first anomalous hour lies in
// [from, to), newest first. A tenant key reads its own tenant (tenant may
// be left out); an admin or viewer key reads the tenant named, or every
// tenant when none is.
func (a *API) getAnomalies(w http.ResponseWriter, r *http.Request) {
	p, ok := a.gate.Principal(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	tenant := q.Get("tenant")
	if tenant == "" && p.Role == "tenant" {
		tenant = p.Tenant
	}
	if tenant != "" && !events.ValidName(tenant) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "tenant must be "+nameRule)
		return
	}
	if tenant == "" && !p.CanRead("") || tenant != "" && !p.CanRead(tenant) {
		httpjson.Errorf(w, http.StatusForbidden, "forbidden", "this key belongs to tenant %q and cannot read tenant %q", p.Tenant, tenant)
		return
	}
	f := anomalydata.Filter{Tenant: tenant, Meter: q.Get("meter"), Limit: defaultAnomalies}
	if f.Meter != "" && !events.ValidName(f.Meter) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "meter must be "+nameRule)
		return
	}
	for _, name := range []string{"from", "to"} {
		if q.Has(name) && q.Get(name) == "" {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "%s must be an RFC 3339 time when given", name)
			return
		}
	}
	var err error
	if f.From, err = timeParam(q.Get("from"), "from", time.Time{}); err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	if f.To, err = timeParam(q.Get("to"), "to", time.Time{}); err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "from must be before to")
		return
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxAnomalies {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "limit must be an integer from 1 to %d, got %q", maxAnomalies, v)
			return
		}
		f.Limit = n
	}
	if a.opt.DB == nil {
		w.Header().Set("Retry-After", "60")
		httpjson.Error(w, http.StatusServiceUnavailable, "unavailable", "anomalies cannot be read on this server")
		return
	}
	list, err := anomalydata.List(r.Context(), a.opt.DB, f)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if list == nil {
		list = []anomalydata.Stored{}
	}
	var tenantValue any
	if tenant != "" {
		tenantValue = tenant
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenant": tenantValue, "anomalies": list})
}
