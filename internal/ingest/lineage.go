package ingest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/usagemeter/metering/events"

	"github.com/usagemeter/metering/events/jsonstring"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/topics"
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

// LogReader reads usage.events at recorded offsets (kafkalog.Cluster is
// one): the lineage of defined meters, whose events' properties only the
// log keeps.
type LogReader interface {
	// ReadAt calls fn for each of offsets (ascending, distinct) of
	// partition with its record, or nil and why the log lacks it.
	ReadAt(ctx context.Context, topic string, partition int, offsets []int64, fn func(offset int64, rec *record.Record, missing string) error) error
	// LogStart is the first offset partition still holds.
	LogStart(ctx context.Context, topic string, partition int) (int64, error)
}

// lineageWindow is a window an event counted in, or a push billed.
type lineageWindow struct {
	Meter  string              `json:"meter"`
	Window windows.Granularity `json:"window"`
	Start  time.Time           `json:"start"`
	End    time.Time           `json:"end"`
}

// readablePush answers the error and returns false unless the request's
// key may read push identifier, which it returns with the definition of
// its meter as stored now (nil for an implicit meter, whose lineage comes
// from the ledger alone). A defined meter's lineage reads the events'
// properties from the log, so it needs Options.Log.
func (a *API) readablePush(w http.ResponseWriter, r *http.Request) (billingdata.LineagePush, *accounts.Meter, bool) {
	p, ok := a.gate.Principal(w, r)
	if !ok {
		return billingdata.LineagePush{}, nil, false
	}
	id := r.PathValue("identifier")
	if id == "" || len(id) > 100 {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "identifier must be a push identifier (at most 100 characters)")
		return billingdata.LineagePush{}, nil, false
	}
	push, err := billingdata.PushLineage(r.Context(), a.opt.DB, id)
	if errors.Is(err, billingdata.ErrNoPush) || err == nil && !p.CanRead(push.Tenant) {
		// A push of another tenant is as unknown as a missing one.
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no push with identifier %q", id)
		return billingdata.LineagePush{}, nil, false
	}
	if err != nil {
		a.internalError(w, r, err)
		return billingdata.LineagePush{}, nil, false
	}
	var def *accounts.Meter
	m, err := accounts.GetMeter(r.Context(), a.opt.DB, push.Meter)
	switch {
	case err == nil && (!m.Definition().IsImplicit() || push.GroupKey != ""):
		def = &m
	case err == nil || errors.Is(err, accounts.ErrNotFound):
		if push.GroupKey != "" {
			httpjson.Errorf(w, http.StatusUnprocessableEntity, "lineage_unavailable",
				"push %s bills meter %s, which is no longer defined: which events it counted depends on its definition", id, push.Meter)
			return billingdata.LineagePush{}, nil, false
		}
	default:
		a.internalError(w, r, err)
		return billingdata.LineagePush{}, nil, false
	}
	if def != nil && a.opt.Log == nil {
		httpjson.Errorf(w, http.StatusUnprocessableEntity, "lineage_unavailable",
			"push %s bills defined meter %s: which events a defined meter counted depends on their properties, which the ledger does not keep, and this service does not read usage.events; the events are at the offsets /v1/exports/events lists", id, push.Meter)
		return billingdata.LineagePush{}, nil, false
	}
	if push.Snapshot == "" {
		httpjson.Errorf(w, http.StatusUnprocessableEntity, "lineage_unavailable", "push %s was planned before lineage was recorded", id)
		return billingdata.LineagePush{}, nil, false
	}
	return push, def, true
}

// pushLineage serves GET /v1/lineage/pushes/{identifier}: the push, the
// previous push of its tenant, metric and month, and the window it bills;
// for a defined meter also its definition as stored now, what the delta
// is of the listed events, and whether the log still holds them all.
func (a *API) pushLineage(w http.ResponseWriter, r *http.Request) {
	push, def, ok := a.readablePush(w, r)
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
	ws := []lineageWindow{{push.Meter, windows.Month, push.Period, end}}
	eventsPath := "/v1/lineage/pushes/" + push.Identifier + "/events"
	if def == nil {
		httpjson.Write(w, http.StatusOK, struct {
			billingdata.LineagePush
			Windows []lineageWindow `json:"windows"`
			Events  string          `json:"events"`
		}{push, ws, eventsPath})
		return
	}
	d := def.Definition()
	ctx, cancel := context.WithTimeout(r.Context(), lineageLogTimeout)
	defer cancel()
	lost, err := a.retainedCandidates(ctx, push, d)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	reason := ""
	switch {
	case lost != "":
		push.Complete, reason = false, lost
	case !push.Complete:
		reason = "part of the meter's history in this period predates lineage"
	}
	httpjson.Write(w, http.StatusOK, struct {
		billingdata.LineagePush
		Reason     string           `json:"incomplete_reason,omitempty"`
		Definition meter.Definition `json:"definition"`
		Version    int64            `json:"definition_version"`
		Delta      string           `json:"delta_is"`
		Windows    []lineageWindow  `json:"windows"`
		Events     string           `json:"events"`
	}{push, reason, d, def.Version, deltaRule(d.Aggregation), ws, eventsPath})
}

// lineageLogTimeout bounds the reads of the log one lineage request of a
// defined meter makes.
const lineageLogTimeout = 2 * time.Minute

// lineageChunk is the most candidate events of one partition a defined
// meter's lineage holds while it reads their records.
const lineageChunk = 2000

// deltaRule says how the events a push lists make its delta.
func deltaRule(agg meter.Aggregation) string {
	switch agg {
	case meter.Sum:
		return "sum: the values of the listed events and the amounts of the listed adjustments add up to the delta"
	case meter.Count:
		return "count: the listed events, one each, and the amounts of the listed adjustments add up to the delta"
	default:
		return "not_a_sum: the delta is the change of the period's " + string(agg) + "; the listed events are every event the meter counted in the period up to the push"
	}
}

// wholePeriod reports whether a push of agg lists every event of its
// period up to it (its delta is not a sum of the events since the
// previous push).
func wholePeriod(agg meter.Aggregation) bool { return agg != meter.Sum && agg != meter.Count }

// retainedCandidates returns why the log no longer holds every candidate
// event of push ("" when it does): retention deleted the offsets below
// each partition's log start.
func (a *API) retainedCandidates(ctx context.Context, push billingdata.LineagePush, d meter.Definition) (string, error) {
	spans, err := billingdata.MeterCandidateSpans(ctx, a.opt.DB, push, d.Metric, wholePeriod(d.Aggregation))
	if err != nil {
		return "", err
	}
	var lost []string
	for _, s := range spans {
		start, err := a.opt.Log.LogStart(ctx, topics.UsageEvents, int(s.Partition))
		if err != nil {
			return "", fmt.Errorf("reading the log start of partition %d: %w", s.Partition, err)
		}
		if s.First < start {
			lost = append(lost, fmt.Sprintf("partition %d starts at offset %d, the first candidate event is at %d", s.Partition, start, s.First))
		}
	}
	if len(lost) == 0 {
		return "", nil
	}
	return "retention deleted events of this push from usage.events: " + strings.Join(lost, "; "), nil
}

// pushLineageEvents serves GET /v1/lineage/pushes/{identifier}/events:
// the events and adjustments the push carried, streamed (NDJSON or CSV).
// A defined meter's stream lists its events in (partition, offset) order,
// a row of kind "unreadable" for each candidate the log no longer holds or
// that does not decode, and ends with a row of kind "end".
func (a *API) pushLineageEvents(w http.ResponseWriter, r *http.Request) {
	format, err := exportFormat(r)
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	push, def, ok := a.readablePush(w, r)
	if !ok {
		return
	}
	s := newExportStream(w, format, "lineage-"+push.Identifier, []string{"kind", "id", "value", "time", "partition", "offset"})
	emit := func(it billingdata.LineageItem) error {
		return s.row(func(dst []byte) []byte { return appendLineageItem(dst, it) }, func() []string {
			return []string{it.Kind, it.ID, strconv.FormatInt(it.Value, 10), it.Time.Format(time.RFC3339Nano),
				strconv.FormatInt(int64(it.Partition), 10), strconv.FormatInt(it.Offset, 10)}
		})
	}
	if def == nil {
		a.endExport(w, r, s, billingdata.EachPushItem(r.Context(), a.opt.DB, push, emit))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), lineageLogTimeout)
	defer cancel()
	var sum lineageTally
	err = a.eachMeterEvent(ctx, push, def.Definition(), &sum, emit)
	if err == nil {
		err = billingdata.EachPushAdjustment(ctx, a.opt.DB, push, func(it billingdata.LineageItem) error {
			sum.adjustments++
			return emit(it)
		})
	}
	if err == nil {
		err = s.row(func(dst []byte) []byte { return sum.appendEnd(dst, push.Complete) }, func() []string {
			return []string{"end", completeWord(push.Complete && sum.unreadable == 0), strconv.FormatInt(sum.unreadable, 10), "", "", ""}
		})
	}
	a.endExport(w, r, s, err)
}

// lineageTally counts the rows of a defined meter's push lineage.
type lineageTally struct {
	events, adjustments, unreadable int64
}

// appendEnd appends the end row of a defined meter's push lineage.
func (t *lineageTally) appendEnd(dst []byte, complete bool) []byte {
	dst = append(dst, `{"kind":"end","complete":`...)
	dst = strconv.AppendBool(dst, complete && t.unreadable == 0)
	dst = append(dst, `,"events":`...)
	dst = strconv.AppendInt(dst, t.events, 10)
	dst = append(dst, `,"adjustments":`...)
	dst = strconv.AppendInt(dst, t.adjustments, 10)
	dst = append(dst, `,"unreadable":`...)
	dst = strconv.AppendInt(dst, t.unreadable, 10)
	return append(dst, '}')
}

func completeWord(complete bool) string {
	if complete {
		return "complete"
	}
	return "incomplete"
}

// eachMeterEvent calls fn with every event of push's defined meter d
// that the push carried: the ledger's candidates, each read from the log
// at its partition and offset, kept when d (as stored now) takes it into
// push's group; and with a row of kind "unreadable" for a candidate whose
// record the log no longer holds or that does not decode to the event the
// ledger counted. It holds at most lineageChunk candidates at once.
func (a *API) eachMeterEvent(ctx context.Context, push billingdata.LineagePush, d meter.Definition, t *lineageTally, fn func(billingdata.LineageItem) error) error {
	chunk := make([]billingdata.LineageItem, 0, lineageChunk)
	offsets := make([]int64, 0, lineageChunk)
	var key []byte
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		offsets = offsets[:0]
		for _, it := range chunk {
			if n := len(offsets); n == 0 || offsets[n-1] != it.Offset {
				offsets = append(offsets, it.Offset)
			}
		}
		i := 0
		err := a.opt.Log.ReadAt(ctx, topics.UsageEvents, int(chunk[0].Partition), offsets, func(off int64, rec *record.Record, missing string) error {
			var ev events.Event
			if rec != nil {
				if rec.Value == nil {
					missing = "the record is a tombstone"
				} else if err := ev.UnmarshalJSON(rec.Value); err != nil {
					missing = "the record does not decode: " + err.Error()
				}
			}
			for ; i < len(chunk) && chunk[i].Offset == off; i++ {
				it := chunk[i]
				why := missing
				if why == "" && (ev.Tenant != push.Tenant || ev.ID != it.ID) {
					why = "the record is not the event the ledger counted"
				}
				if why != "" {
					t.unreadable++
					it.Kind = "unreadable"
					if err := fn(it); err != nil {
						return err
					}
					continue
				}
				if !d.Matches(ev) {
					continue
				}
				if key = d.Group(ev).AppendKey(key[:0]); string(key) != push.GroupKey {
					continue
				}
				t.events++
				if err := fn(it); err != nil {
					return err
				}
			}
			return nil
		})
		chunk = chunk[:0]
		if err != nil {
			return fmt.Errorf("reading the events of push %s from the log: %w", push.Identifier, err)
		}
		return nil
	}
	err := billingdata.EachMeterCandidate(ctx, a.opt.DB, push, d.Metric, wholePeriod(d.Aggregation), func(it billingdata.LineageItem) error {
		if len(chunk) == lineageChunk || len(chunk) > 0 && chunk[0].Partition != it.Partition {
			if err := flush(); err != nil {
				return err
			}
		}
		chunk = append(chunk, it)
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
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
// carried it to Stripe; and the same for each defined meter of its metric
// whose definition (as stored now) takes the event, read from the log.
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
	ms, reason, err := a.eventMeters(r.Context(), e)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, struct {
		billingdata.EventLineage
		Windows        []lineageWindow `json:"windows"`
		Meters         []eventMeter    `json:"meters"`
		MetersComplete bool            `json:"meters_complete"`
		MetersReason   string          `json:"meters_incomplete_reason,omitempty"`
	}{e, ws, ms, reason == "", reason})
}

// eventMeter is a defined meter an event counted in: its group, its
// windows and the push that carried the event.
type eventMeter struct {
	Meter   string                 `json:"meter"`
	Version int64                  `json:"definition_version"`
	Group   string                 `json:"group"`
	Windows []lineageWindow        `json:"windows"`
	Push    *billingdata.EventPush `json:"push"`
}

// eventMeters returns the defined meters of e's metric that take e (as
// defined now), read from the log, or why it could not tell.
func (a *API) eventMeters(ctx context.Context, e billingdata.EventLineage) ([]eventMeter, string, error) {
	all, err := accounts.ListMeters(ctx, a.opt.DB)
	if err != nil {
		return nil, "", err
	}
	var defs []accounts.Meter
	for _, m := range all {
		if m.Metric == e.Metric && !m.Definition().IsImplicit() {
			defs = append(defs, m)
		}
	}
	out := []eventMeter{}
	if len(defs) == 0 {
		return out, "", nil
	}
	if a.opt.Log == nil {
		return out, "this service does not read usage.events, where the properties the defined meters of " + e.Metric + " select by are kept", nil
	}
	ctx, cancel := context.WithTimeout(ctx, lineageLogTimeout)
	defer cancel()
	var ev events.Event
	reason := ""
	err = a.opt.Log.ReadAt(ctx, topics.UsageEvents, int(e.Partition), []int64{e.Offset}, func(_ int64, rec *record.Record, missing string) error {
		switch {
		case rec == nil:
			reason = "the event's record is " + missing
		case rec.Value == nil:
			reason = "the event's record is a tombstone"
		default:
			if err := ev.UnmarshalJSON(rec.Value); err != nil {
				reason = "the event's record does not decode: " + err.Error()
			} else if ev.Tenant != e.Tenant || ev.ID != e.ID {
				reason = "the record at the event's offset is another event"
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("reading event %s from the log: %w", e.ID, err)
	}
	if reason != "" {
		return out, reason, nil
	}
	sched, err := accounts.TenantSchedule(ctx, a.opt.DB, e.Tenant)
	if err != nil {
		return nil, "", err
	}
	for _, m := range defs {
		d := m.Definition()
		if !d.Matches(ev) {
			continue
		}
		em := eventMeter{Meter: m.Name, Version: m.Version, Group: d.Group(ev).Key()}
		for _, g := range []windows.Granularity{windows.Hour, windows.Day} {
			start, end := g.Span(e.Time)
			em.Windows = append(em.Windows, lineageWindow{m.Name, g, start, end})
		}
		start, end := sched.Span(e.Time)
		em.Windows = append(em.Windows, lineageWindow{m.Name, windows.Month, start, end})
		if e.Traced {
			if em.Push, err = billingdata.MeterPushOf(ctx, a.opt.DB, e.Tenant, e.ID, m.Name, em.Group); err != nil {
				return nil, "", err
			}
		}
		out = append(out, em)
	}
	return out, "", nil
}
