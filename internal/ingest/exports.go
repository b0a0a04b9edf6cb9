package ingest

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/events/jsonstring"
	"github.com/usagemeter/metering/internal/csvsafe"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/windows"
)

// exportRoutes are the itemised exports: counted events and windows,
// streamed.
func (a *API) exportRoutes() []Route {
	tenantParam := func(r *http.Request) string { return r.URL.Query().Get("tenant") }
	return []Route{
		{"GET", "/v1/exports/events", a.reader(tenantParam, a.exportEvents)},
		{"GET", "/v1/exports/windows", a.reader(tenantParam, a.exportWindows)},
	}
}

// exportFlushEvery is how many rows an export writes between flushes; a
// flush also pushes the write deadline forward, so that an export lasts as
// long as the client reads it.
const exportFlushEvery = 1000

// exportWriteWindow is how long the client has to read the rows written
// between two flushes.
const exportWriteWindow = time.Minute

// exportFormat reads format= (ndjson, the default, or csv).
func exportFormat(r *http.Request) (string, error) {
	switch f := r.URL.Query().Get("format"); f {
	case "", "ndjson":
		return "ndjson", nil
	case "csv":
		return "csv", nil
	default:
		return "", fmt.Errorf("format must be ndjson or csv, got %q", f)
	}
}

// exportQuery reads format= (see exportFormat), from= and to= (RFC 3339;
// to defaults to now, from to a day before to).
func (a *API) exportQuery(r *http.Request) (format string, from, to time.Time, err error) {
	if format, err = exportFormat(r); err != nil {
		return "", time.Time{}, time.Time{}, err
	}
	q := r.URL.Query()
	if to, err = timeParam(q.Get("to"), "to", a.opt.Now()); err != nil {
		return "", time.Time{}, time.Time{}, err
	}
	if from, err = timeParam(q.Get("from"), "from", to.Add(-24*time.Hour)); err != nil {
		return "", time.Time{}, time.Time{}, err
	}
	if !from.Before(to) {
		return "", time.Time{}, time.Time{}, errors.New("from must be before to (from is inclusive, to exclusive)")
	}
	return format, from, to, nil
}

// exportStream writes rows of one export: NDJSON (one JSON object per
// line) or CSV (a header, then one record per row, cells made safe for
// spreadsheets), flushing every exportFlushEvery rows.
// The status line and headers are sent with the first row (or at the
// end), so that a failure before any row is still an ordinary error
// answer.
type exportStream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	buf     *bufio.Writer
	csv     *csvsafe.Writer
	rows    int
	header  []string
	name    string
	started bool
	line    []byte // scratch for one JSON line
}

func newExportStream(w http.ResponseWriter, format, name string, header []string) *exportStream {
	s := &exportStream{w: w, rc: http.NewResponseController(w), buf: bufio.NewWriterSize(w, 64<<10), header: header, name: name}
	if format == "csv" {
		s.csv = csvsafe.NewWriter(s.buf)
	}
	return s
}

// start sends the status line and headers, once.
func (s *exportStream) start() {
	if s.started {
		return
	}
	s.started = true
	h := s.w.Header()
	if s.csv != nil {
		h.Set("Content-Type", "text/csv; charset=utf-8")
		h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", s.name+".csv"))
	} else {
		h.Set("Content-Type", "application/x-ndjson")
	}
	h.Set("Cache-Control", "no-store")
	_ = s.rc.SetWriteDeadline(time.Now().Add(exportWriteWindow))
	s.w.WriteHeader(http.StatusOK)
}

// row writes one row: a JSON line made by appendJSON, or cells as a CSV
// record (the header first).
func (s *exportStream) row(appendJSON func([]byte) []byte, cells func() []string) error {
	s.start()
	if s.csv != nil {
		if s.rows == 0 {
			if err := s.csv.Write(s.header); err != nil {
				return err
			}
		}
		if err := s.csv.Write(cells()); err != nil {
			return err
		}
	} else {
		s.line = append(appendJSON(s.line[:0]), '\n')
		if _, err := s.buf.Write(s.line); err != nil {
			return err
		}
	}
	s.rows++
	if s.rows%exportFlushEvery == 0 {
		return s.flush()
	}
	return nil
}

// flush sends what is buffered and gives the client exportWriteWindow
// more to read it.
func (s *exportStream) flush() error {
	if s.csv != nil {
		if err := s.csv.Flush(); err != nil {
			return err
		}
	}
	if err := s.buf.Flush(); err != nil {
		return err
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(exportWriteWindow))
	return s.rc.Flush()
}

// endExport finishes the export s: on success the last rows (and the CSV
// header of an empty export). A failure before any row is an ordinary
// 500; after, the response is aborted, so that the client sees a broken
// transfer and never takes a partial export for a whole one.
func (a *API) endExport(w http.ResponseWriter, r *http.Request, s *exportStream, err error) {
	if err != nil && !s.started {
		a.internalError(w, r, err)
		return
	}
	s.start()
	if err == nil && s.csv != nil && s.rows == 0 {
		err = s.csv.Write(s.header)
	}
	if err == nil {
		err = s.flush()
	}
	if err != nil {
		a.opt.Logger.ErrorContext(r.Context(), "export aborted", "route", r.Pattern, "rows", s.rows, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// exportEvents serves GET /v1/exports/events: the events the ledger
// counted for the tenant (of metric=, if given) with time in [from, to),
// in (time, id) order, each with its source partition and offset.
func (a *API) exportEvents(w http.ResponseWriter, r *http.Request, tenant string) {
	format, from, to, err := a.exportQuery(r)
	if m := r.URL.Query().Get("metric"); err == nil && m != "" && !events.ValidName(m) {
		err = errors.New("metric: " + nameRule)
	}
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	s := newExportStream(w, format, "events-"+tenant, []string{"id", "tenant", "metric", "value", "time", "partition", "offset", "recorded_at"})
	err = usagedata.EachCountedEvent(r.Context(), a.opt.DB, tenant, r.URL.Query().Get("metric"), from, to, func(e usagedata.CountedEvent) error {
		return s.row(func(dst []byte) []byte { return appendCountedEvent(dst, e) }, func() []string {
			return []string{e.ID, e.Tenant, e.Metric, strconv.FormatInt(e.Value, 10), e.Time.Format(time.RFC3339Nano),
				strconv.FormatInt(int64(e.Partition), 10), strconv.FormatInt(e.Offset, 10), e.RecordedAt.Format(time.RFC3339Nano)}
		})
	})
	a.endExport(w, r, s, err)
}

// appendCountedEvent appends e as a line of GET /v1/exports/events.
func appendCountedEvent(dst []byte, e usagedata.CountedEvent) []byte {
	dst = append(dst, `{"id":`...)
	dst = jsonstring.Wire.Append(dst, e.ID)
	dst = append(dst, `,"tenant":`...)
	dst = jsonstring.Wire.Append(dst, e.Tenant)
	dst = append(dst, `,"metric":`...)
	dst = jsonstring.Wire.Append(dst, e.Metric)
	dst = append(dst, `,"value":`...)
	dst = strconv.AppendInt(dst, e.Value, 10)
	dst = append(dst, `,"time":"`...)
	dst = e.Time.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","partition":`...)
	dst = strconv.AppendInt(dst, int64(e.Partition), 10)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendInt(dst, e.Offset, 10)
	dst = append(dst, `,"recorded_at":"`...)
	dst = e.RecordedAt.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, `"}`...)
}

// appendWindow appends w, with its group as an object of the meter's
// group_by (null for a missing property; {} for a meter without groups),
// as a line of GET /v1/exports/windows.
func appendWindow(dst []byte, w usagedata.ExportWindow, group []byte) []byte {
	dst = append(dst, `{"tenant":`...)
	dst = jsonstring.Wire.Append(dst, w.Tenant)
	dst = append(dst, `,"meter":`...)
	dst = jsonstring.Wire.Append(dst, w.Meter)
	dst = append(dst, `,"group":`...)
	dst = append(dst, group...)
	dst = append(dst, `,"window":"`...)
	dst = append(dst, w.Window...)
	dst = append(dst, `","start":"`...)
	dst = w.Start.AppendFormat(dst, time.RFC3339)
	dst = append(dst, `","end":"`...)
	dst = w.End.AppendFormat(dst, time.RFC3339)
	dst = append(dst, `","value":`...)
	dst = append(dst, w.Value...)
	dst = append(dst, `,"events":`...)
	dst = strconv.AppendInt(dst, w.Events, 10)
	return append(dst, '}')
}

// exportWindows serves GET /v1/exports/windows: every stored window of
// one meter (meter=, or metric= for its implicit meter) and granularity
// (window=, default hour) starting in [from, to), per group.
func (a *API) exportWindows(w http.ResponseWriter, r *http.Request, tenant string) {
	q := r.URL.Query()
	format, from, to, err := a.exportQuery(r)
	name := q.Get("meter")
	switch {
	case err != nil:
	case q.Has("meter") == q.Has("metric"):
		err = errors.New("exactly one of meter= or metric= is required")
	case q.Has("metric"):
		name = q.Get("metric")
	}
	if err == nil && !events.ValidName(name) {
		err = errors.New("meter or metric: " + nameRule)
	}
	g := windows.Hour
	if err == nil && q.Get("window") != "" {
		g, err = windows.Parse(q.Get("window"))
	}
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	var groupBy []string
	if q.Has("meter") {
		m, err := accounts.GetMeter(r.Context(), a.opt.DB, name)
		switch {
		case errors.Is(err, accounts.ErrNotFound):
			// An undefined name reads the implicit meter of that metric,
			// as GET /v1/usage does.
		case err != nil:
			a.internalError(w, r, err)
			return
		default:
			groupBy = m.GroupBy
		}
	}
	s := newExportStream(w, format, "windows-"+tenant+"-"+name, []string{"tenant", "meter", "group", "window", "start", "end", "value", "events"})
	err = usagedata.EachWindow(r.Context(), a.opt.DB, tenant, name, g, from, to, func(x usagedata.ExportWindow) error {
		group := []byte("{}")
		if len(groupBy) > 0 {
			gr, err := meter.ParseGroupKey(groupBy, x.Group)
			if err != nil {
				return fmt.Errorf("window %s of group %s: %w", x.Start, x.Group, err)
			}
			group = gr.AppendJSON(nil)
		}
		return s.row(func(dst []byte) []byte { return appendWindow(dst, x, group) }, func() []string {
			return []string{x.Tenant, x.Meter, string(group), string(x.Window), x.Start.Format(time.RFC3339), x.End.Format(time.RFC3339), x.Value, strconv.FormatInt(x.Events, 10)}
		})
	})
	a.endExport(w, r, s, err)
}
