package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage/accounts"
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
		p, ok := a.gate.Principal(w, r)
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

// usageQuery is a parsed GET /v1/usage query: metric (its implicit
// meter, answered as before meters existed) or meter, with meter's
// group_by and filter.
type usageQuery struct {
	metric   string
	meter    string
	groupBy  []string
	filter   map[string]string
	g        windows.Granularity
	from, to time.Time
}

const nameRule = "1-128 characters of A-Z a-z 0-9 . _ : -"

// parseUsageQuery reads metric or meter, group_by, filter[...], window,
// from and to; now is the default end. The error is the message for a
// 400. group_by is repeated, one property a parameter
// (group_by=model&group_by=region), since a property name may hold a
// comma; filter is filter[property]=value, once per property.
func parseUsageQuery(q url.Values, now time.Time) (usageQuery, error) {
	u := usageQuery{metric: q.Get("metric"), meter: q.Get("meter"), g: windows.Hour}
	switch {
	case q.Has("metric") && q.Has("meter"):
		return u, errors.New("metric and meter are mutually exclusive: metric=M reads the usage of M's implicit meter, as meter=M does")
	case q.Has("meter"):
		if !events.ValidName(u.meter) {
			return u, errors.New("meter must be " + nameRule)
		}
		if err := parseGroups(q, &u); err != nil {
			return u, err
		}
	case !q.Has("metric"):
		return u, errors.New("metric or meter is required: " + nameRule)
	case !events.ValidName(u.metric):
		return u, errors.New("metric is required: " + nameRule)
	default:
		if q.Has("group_by") || hasFilter(q) {
			return u, errors.New("group_by and filter need meter=: a metric's implicit meter has no groups")
		}
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

// hasFilter reports whether q holds a filter parameter.
func hasFilter(q url.Values) bool {
	for k := range q {
		if isFilter(k) {
			return true
		}
	}
	return false
}

// isFilter reports whether the parameter k is a filter, well formed
// (filter[property]) or not (filter, filter[).
func isFilter(k string) bool { return k == "filter" || strings.HasPrefix(k, "filter[") }

// parseGroups reads group_by and filter[property] into u. Whether the
// meter groups by these properties is checked against its definition.
func parseGroups(q url.Values, u *usageQuery) error {
	u.groupBy = q["group_by"]
	if len(u.groupBy) > meter.MaxGroupBy {
		return fmt.Errorf("group_by may name at most %d properties (a meter groups by at most %d), got %d", meter.MaxGroupBy, meter.MaxGroupBy, len(u.groupBy))
	}
	for i, p := range u.groupBy {
		if msg := checkProperty(p); msg != "" {
			return fmt.Errorf("group_by %q: %s", p, msg)
		}
		if slices.Contains(u.groupBy[:i], p) {
			return fmt.Errorf("group_by names %q twice", p)
		}
	}
	u.filter = map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if !isFilter(k) {
			continue
		}
		p, open := strings.CutPrefix(k, "filter[")
		p, closed := strings.CutSuffix(p, "]")
		if !open || !closed {
			return fmt.Errorf("%q: a filter is filter[property]=value", k)
		}
		if msg := checkProperty(p); msg != "" {
			return fmt.Errorf("filter[%s]: property %s", p, msg)
		}
		if len(q[k]) != 1 {
			return fmt.Errorf("filter[%s] is given %d times: give each property one value", p, len(q[k]))
		}
		if len(u.filter) == meter.MaxGroupBy {
			return fmt.Errorf("filter may name at most %d properties (those a meter groups by)", meter.MaxGroupBy)
		}
		u.filter[p] = q[k][0]
	}
	return nil
}

// checkProperty is "" for a possible property name, else why not.
func checkProperty(p string) string {
	switch {
	case p == "":
		return "must not be empty"
	case len(p) > events.MaxPropertyKeyLen:
		return fmt.Sprintf("must be at most %d bytes", events.MaxPropertyKeyLen)
	case !utf8.ValidString(p):
		return "must be valid UTF-8"
	}
	return ""
}

// getMeters answers the defined meters that counted the tenant's usage
// in its current billing period, for the usage page: a tenant key may
// read them for its own tenant, as it reads its usage.
func (a *API) getMeters(w http.ResponseWriter, r *http.Request, tenant string) {
	sched, err := accounts.TenantSchedule(r.Context(), a.opt.DB, tenant)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	from := windows.Month.StartIn(sched, a.opt.Now())
	ms, err := a.opt.Usage.TenantMeters(r.Context(), tenant, from)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if ms == nil {
		ms = []meter.Definition{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenant": tenant, "from": from, "meters": ms})
}

func (a *API) getUsage(w http.ResponseWriter, r *http.Request, tenant string) {
	q, err := parseUsageQuery(r.URL.Query(), a.opt.Now())
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	if q.meter != "" {
		a.getMeterUsage(w, r, tenant, q)
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

// getMeterUsage answers GET /v1/usage?meter=: the meter's windows per
// group of group_by and a total per group. A name no meter is defined
// with is its metric's implicit meter (sum, no groups), as metric= reads.
func (a *API) getMeterUsage(w http.ResponseWriter, r *http.Request, tenant string, q usageQuery) {
	d, defined, err := a.opt.Usage.Meter(r.Context(), q.meter)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	for _, p := range slices.Concat(q.groupBy, slices.Sorted(maps.Keys(q.filter))) {
		if slices.Contains(d.GroupBy, p) {
			continue
		}
		field := "group_by"
		if !slices.Contains(q.groupBy, p) {
			field = "filter[" + p + "]"
		}
		switch {
		case !defined:
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "%s: no meter %q is defined, so it is the implicit meter of metric %q, which has no groups", field, q.meter, q.meter)
		case len(d.GroupBy) == 0:
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "%s: meter %q has no groups", field, q.meter)
		default:
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "%s: meter %q groups only by %s, not %q", field, q.meter, strings.Join(d.GroupBy, ", "), p)
		}
		return
	}
	u, err := a.opt.Usage.MeterUsage(r.Context(), usagedata.MeterQuery{
		Tenant: tenant, Meter: d, Granularity: q.g, From: q.from, To: q.to, GroupBy: q.groupBy, Filter: q.filter, MaxWindows: maxWindows,
	})
	switch {
	case errors.Is(err, usagedata.ErrTooManyWindows):
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "the answer holds more than %d windows (groups times windows): narrow the range, use a larger window, group by fewer properties or filter", maxWindows)
		return
	case errors.Is(err, usagedata.ErrBadMeterQuery):
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	case err != nil:
		a.internalError(w, r, err)
		return
	}
	groupBy := q.groupBy
	if groupBy == nil {
		groupBy = []string{}
	}
	body, err := meterUsageJSON(meterUsageAnswer{
		tenant: tenant, meter: d.Name, metric: d.Metric, aggregation: d.Aggregation, groupBy: groupBy, filter: q.filter,
		window: q.g, from: q.from, to: q.to, usage: u,
	})
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// meterUsageAnswer is the answer of GET /v1/usage?meter=.
type meterUsageAnswer struct {
	tenant, meter, metric string
	aggregation           meter.Aggregation
	groupBy               []string
	filter                map[string]string
	window                windows.Granularity
	from, to              time.Time
	usage                 usagedata.MeterUsage
}

// meterUsageJSON returns the bytes httpjson.Write writes for the map of
// its fields (keys in order, HTML not escaped, a newline at the end),
// with the windows and totals appended in one pass rather than encoded
// by encoding/json and compacted again: an answer holds up to maxWindows
// windows.
func meterUsageJSON(a meterUsageAnswer) ([]byte, error) {
	var small bytes.Buffer
	enc := json.NewEncoder(&small)
	enc.SetEscapeHTML(false)
	value := func(dst []byte, v any) ([]byte, error) {
		small.Reset()
		if err := enc.Encode(v); err != nil {
			return nil, fmt.Errorf("writing the usage of meter %s: %w", a.meter, err)
		}
		return append(dst, bytes.TrimSuffix(small.Bytes(), []byte("\n"))...), nil
	}
	u := a.usage
	dst := make([]byte, 0, 512+len(u.Windows)*128+len(u.Totals)*96)
	var err error
	for _, f := range []struct {
		key string
		v   any
	}{
		{"aggregation", a.aggregation}, {"filter", a.filter}, {"from", a.from}, {"group_by", a.groupBy},
		{"meter", a.meter}, {"metric", a.metric}, {"tenant", a.tenant}, {"to", a.to}, {"total", u.Total},
	} {
		if len(dst) == 0 {
			dst = append(dst, '{')
		} else {
			dst = append(dst, ',')
		}
		dst = append(append(append(dst, '"'), f.key...), `":`...)
		if dst, err = value(dst, f.v); err != nil {
			return nil, err
		}
	}
	dst = u.Totals.AppendJSON(append(dst, `,"totals":`...))
	dst = append(dst, `,"window":`...)
	if dst, err = value(dst, a.window); err != nil {
		return nil, err
	}
	dst = u.Windows.AppendJSON(append(dst, `,"windows":`...))
	return append(dst, "}\n"...), nil
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
	inForce, qs, err := a.opt.Usage.QuotasInForce(r.Context(), tenant, a.opt.Now())
	if errors.Is(err, usagedata.ErrUnknownTenant) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no tenant %q; register it with PUT /v1/admin/tenants/%s", tenant, tenant)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	var planValue, source any
	if inForce.Plan != "" {
		planValue = inForce.Plan
	}
	if inForce.Source != "" {
		source = inForce.Source
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenant": tenant, "plan": planValue, "plan_source": source, "quotas": qs})
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
