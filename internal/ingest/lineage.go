package ingest

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/usagemeter/metering/events/jsonstring"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/windows"
)

// lineageRoutes trace a charge to its events and an event to its charge.
func (a *API) lineageRoutes() []Route {
	return []Route{
		{"GET", "/v1/lineage/pushes/{identifier}", a.pushLineage},
		{"GET", "/v1/lineage/pushes/{identifier}/events", a.pushLineageEvents},
		{"GET", "/v1/lineage/events/{id}", a.reader(func(r *http.Request) string { return r.URL.Query().Get("tenant") }, a.eventLineage)},
	}
}

// lineageWindow is a window an event counted in, or a push billed.
type lineageWindow struct {
	Meter  string              `json:"meter"`
	Window windows.Granularity `json:"window"`
	Start  time.Time           `json:"start"`
	End    time.Time           `json:"end"`
}

// readablePush answers the error and returns false unless the request's
// key may read push identifier, which it returns, and the push bills an
// implicit meter (its lineage comes from the ledger, which keeps no
// properties).
func (a *API) readablePush(w http.ResponseWriter, r *http.Request) (billingdata.LineagePush, bool) {
	p, ok := a.authenticate(w, r)
	if !ok {
		return billingdata.LineagePush{}, false
	}
	id := r.PathValue("identifier")
	if id == "" || len(id) > 100 {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "identifier must be a push identifier (at most 100 characters)")
		return billingdata.LineagePush{}, false
	}
	push, err := billingdata.PushLineage(r.Context(), a.opt.DB, id)
	if errors.Is(err, billingdata.ErrNoPush) || err == nil && !p.CanRead(push.Tenant) {
		// A push of another tenant is as unknown as a missing one.
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no push with identifier %q", id)
		return billingdata.LineagePush{}, false
	}
	if err != nil {
		a.internalError(w, r, err)
		return billingdata.LineagePush{}, false
	}
	if _, err := accounts.GetMeter(r.Context(), a.opt.DB, push.Meter); err == nil || push.GroupKey != "" {
		httpjson.Errorf(w, http.StatusUnprocessableEntity, "lineage_unavailable",
			"push %s bills defined meter %s: which events a defined meter counted depends on their properties, which the ledger does not keep; the events are in usage.events at the offsets /v1/exports/events lists", id, push.Meter)
		return billingdata.LineagePush{}, false
	} else if !errors.Is(err, accounts.ErrNotFound) {
		a.internalError(w, r, err)
		return billingdata.LineagePush{}, false
	}
	if push.Snapshot == "" {
		httpjson.Errorf(w, http.StatusUnprocessableEntity, "lineage_unavailable", "push %s was planned before lineage was recorded", id)
		return billingdata.LineagePush{}, false
	}
	return push, true
}

// pushLineage serves GET /v1/lineage/pushes/{identifier}: the push, the
// previous push of its tenant, metric and month, and the window it bills.
func (a *API) pushLineage(w http.ResponseWriter, r *http.Request) {
	push, ok := a.readablePush(w, r)
	if !ok {
		return
	}
	// The month window is the tenant's billing period that starts at the
	// push's period.
	sched, err := accounts.TenantSchedule(r.Context(), a.opt.DB, push.Tenant)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	_, end := sched.Span(push.Period)
	httpjson.Write(w, http.StatusOK, struct {
		billingdata.LineagePush
		Windows []lineageWindow `json:"windows"`
		Events  string          `json:"events"`
	}{push, []lineageWindow{{push.Meter, windows.Month, push.Period, end}},
		"/v1/lineage/pushes/" + push.Identifier + "/events"})
}

// pushLineageEvents serves GET /v1/lineage/pushes/{identifier}/events:
// the events and adjustments the push carried, streamed (NDJSON or CSV).
func (a *API) pushLineageEvents(w http.ResponseWriter, r *http.Request) {
	format, err := exportFormat(r)
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	push, ok := a.readablePush(w, r)
	if !ok {
		return
	}
	s := newExportStream(w, format, "lineage-"+push.Identifier, []string{"kind", "id", "value", "time", "partition", "offset"})
	err = billingdata.EachPushItem(r.Context(), a.opt.DB, push, func(it billingdata.LineageItem) error {
		return s.row(func(dst []byte) []byte { return appendLineageItem(dst, it) }, func() []string {
			return []string{it.Kind, it.ID, strconv.FormatInt(it.Value, 10), it.Time.Format(time.RFC3339Nano),
				strconv.FormatInt(int64(it.Partition), 10), strconv.FormatInt(it.Offset, 10)}
		})
	})
	a.endExport(w, r, s, err)
}

// appendLineageItem appends it as a line of the push lineage export.
func appendLineageItem(dst []byte, it billingdata.LineageItem) []byte {
	dst = append(dst, `{"kind":"`...)
	dst = append(dst, it.Kind...)
	dst = append(dst, `","id":`...)
	dst = jsonstring.Wire.Append(dst, it.ID)
	dst = append(dst, `,"value":`...)
	dst = strconv.AppendInt(dst, it.Value, 10)
	dst = append(dst, `,"time":"`...)
	dst = it.Time.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","partition":`...)
	dst = strconv.AppendInt(dst, int64(it.Partition), 10)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendInt(dst, it.Offset, 10)
	return append(dst, '}')
}

// eventLineage serves GET /v1/lineage/events/{id}: the windows of its
// metric's implicit meter the event counted in, and the push that
// carried it to Stripe.
func (a *API) eventLineage(w http.ResponseWriter, r *http.Request, tenant string) {
	id := r.PathValue("id")
	if id == "" || len(id) > 128 {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "id must be an event id (1-128 characters)")
		return
	}
	e, err := billingdata.EventLineageOf(r.Context(), a.opt.DB, tenant, id)
	if errors.Is(err, billingdata.ErrNoEvent) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "tenant %s has no counted event %q in the ledger (it keeps the dedup horizon)", tenant, id)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	ws := make([]lineageWindow, 0, len(windows.All))
	for _, g := range windows.All {
		start, end := g.Span(e.Time)
		ws = append(ws, lineageWindow{e.Metric, g, start, end})
	}
	httpjson.Write(w, http.StatusOK, struct {
		billingdata.EventLineage
		Windows []lineageWindow `json:"windows"`
	}{e, ws})
}
