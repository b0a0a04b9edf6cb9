package ingest

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/windows"
)

// maxWindows bounds one usage response.
const maxWindows = 10000

// defaultSpan is the range a usage query covers when from is omitted.
var defaultSpan = map[windows.Granularity]time.Duration{
	windows.Minute: time.Hour, windows.Hour: 24 * time.Hour, windows.Day: 31 * 24 * time.Hour, windows.Month: 366 * 24 * time.Hour,
}

// reader wraps h so only keys that may read the tenant reach it.
func (a *API) reader(tenantOf func(*http.Request) string, h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := a.authenticate(w, r)
		if !ok {
			return
		}
		tenant := tenantOf(r)
		if tenant == "" && p.Role == "tenant" {
			tenant = p.Tenant
		}
		if !events.ValidName(tenant) {
			httpjson.Error(w, http.StatusBadRequest, "invalid_request", "tenant is required: 1-128 characters of A-Z a-z 0-9 . _ : -")
			return
		}
		if !p.CanRead(tenant) {
			httpjson.Errorf(w, http.StatusForbidden, "forbidden", "this key belongs to tenant %q and cannot read tenant %q", p.Tenant, tenant)
			return
		}
		h(w, r, tenant)
	}
}

// usageQuery is a parsed GET /v1/usage query.
type usageQuery struct {
	metric   string
	g        windows.Granularity
	from, to time.Time
}

// parseUsageQuery reads metric, window, from and to; now is the default
// end. The error is the message for a 400.
func parseUsageQuery(q url.Values, now time.Time) (usageQuery, error) {
	u := usageQuery{metric: q.Get("metric"), g: windows.Hour}
	if !events.ValidName(u.metric) {
		return u, errors.New("metric is required: 1-128 characters of A-Z a-z 0-9 . _ : -")
	}
	if s := q.Get("window"); s != "" {
		var err error
		if u.g, err = windows.Parse(s); err != nil {
			return u, err
		}
	}
	var err error
	if u.to, err = timeParam(q.Get("to"), "to", now); err != nil {
		return u, err
	}
	if u.from, err = timeParam(q.Get("from"), "from", u.to.Add(-defaultSpan[u.g])); err != nil {
		return u, err
	}
	if !u.from.Before(u.to) {
		return u, errors.New("from must be before to (from is inclusive, to exclusive)")
	}
	if n := windowCount(u.g, u.from, u.to); n > maxWindows {
		return u, fmt.Errorf("the range holds up to %d %s windows; at most %d per request: narrow it or use a larger window", n, u.g, maxWindows)
	}
	return u, nil
}

func (a *API) getUsage(w http.ResponseWriter, r *http.Request, tenant string) {
	q, err := parseUsageQuery(r.URL.Query(), a.opt.Now())
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	ws, total, err := a.opt.Usage.Usage(r.Context(), tenant, q.metric, q.g, q.from, q.to)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if ws == nil {
		ws = []usagedata.Window{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{
		"tenant": tenant, "metric": q.metric, "window": q.g, "from": q.from, "to": q.to, "windows": ws, "total": total,
	})
}

// timeParam parses the RFC 3339 query parameter name, or returns def when
// it is empty.
func timeParam(value, name string, def time.Time) (time.Time, error) {
	if value == "" {
		return def.UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, value)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s must be an RFC 3339 time such as 2026-11-01T00:00:00Z, got %q", name, value)
	}
	return t.UTC(), nil
}

// windowCount estimates how many windows of g start in [from, to).
func windowCount(g windows.Granularity, from, to time.Time) int64 {
	if to.Sub(from) < 0 || to.Sub(from) == time.Duration(math.MaxInt64) {
		return math.MaxInt64 // the span overflows a Duration: far too many
	}
	switch g {
	case windows.Minute:
		return int64(to.Sub(from)/time.Minute) + 1
	case windows.Hour:
		return int64(to.Sub(from)/time.Hour) + 1
	case windows.Day:
		return int64(to.Sub(from)/(24*time.Hour)) + 1
	}
	return int64(to.Sub(from)/(28*24*time.Hour)) + 1
}

func (a *API) getQuotas(w http.ResponseWriter, r *http.Request, tenant string) {
	plan, qs, err := a.opt.Usage.Quotas(r.Context(), tenant, a.opt.Now())
	if errors.Is(err, usagedata.ErrUnknownTenant) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no tenant %q; register it with PUT /v1/admin/tenants/%s", tenant, tenant)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	var planValue any
	if plan != "" {
		planValue = plan
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenant": tenant, "plan": planValue, "quotas": qs})
}

func (a *API) getBreaches(w http.ResponseWriter, r *http.Request, tenant string) {
	bs, err := a.opt.Usage.Breaches(r.Context(), tenant, 200)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if bs == nil {
		bs = []quota.Breach{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenant": tenant, "breaches": bs})
}

func (a *API) getBill(w http.ResponseWriter, r *http.Request, tenant string) {
	b, err := a.opt.Usage.Bill(r.Context(), tenant, a.opt.Now())
	if errors.Is(err, usagedata.ErrUnknownTenant) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no tenant %q", tenant)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, b)
}
