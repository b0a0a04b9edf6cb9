// Package stripefake is a stateful Stripe test server for the billing
// meter endpoints the biller uses: meters, meter events, meter event
// adjustments and event summaries, and customer balance transactions
// (balance.go). It keeps what it is sent, dedups
// identifiers for 24 hours, replays Idempotency-Key responses, enforces
// the timestamp window, aggregates asynchronously after a configurable
// delay, and injects faults (429 rate_limit, 429 lock_timeout, 500 with
// Stripe-Should-Retry, timeouts after processing) at a configurable rate.
//
// It also keeps, after every accepted event and every cancellation, the
// running total of the event's customer, meter and month (Running, and
// Config.OnTotal as it happens), so tests can check a bound at every
// instant, not only at the end; and its clock (Config.Now, Clock) can be
// moved past the 24 hours after which it, like Stripe, forgets identifiers
// and Idempotency-Keys.
//
// Invariant: within 24 hours an identifier counts in summaries once,
// whatever the retries, replays and faults; the totals and running totals
// it reports are exact sums of the events it accepted and did not cancel.
//
// Test and dev tooling, not product (see internal/testkit): no product
// package imports it, and it does not import testing, since the dev
// binaries under tools/ link it.
package stripefake

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fault kinds.
const (
	FaultRateLimit   = "rate_limit"
	FaultLockTimeout = "lock_timeout"
	FaultServerError = "server_error"
	// FaultTimeout processes the request, then never answers: the client
	// times out without knowing it succeeded.
	FaultTimeout = "timeout"
)

// AllFaults lists every fault kind.
var AllFaults = []string{FaultRateLimit, FaultLockTimeout, FaultServerError, FaultTimeout}

// Config of a Server.
type Config struct {
	// FaultRate is the share of POST requests that fail, 0..1.
	FaultRate float64
	// Faults are the kinds injected; empty means AllFaults.
	Faults []string
	// AggregationDelay is how long an event takes to show in summaries.
	AggregationDelay time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Seed makes fault injection repeatable.
	Seed uint64
	// Latency delays every meter event request, after it is recorded and
	// before it is answered: the window in which a crashing client does
	// not learn that Stripe has the event.
	Latency time.Duration
	// Reject, if set, makes meter events it returns true for fail with a
	// permanent 400 invalid_request_error.
	Reject func(eventName, customer string) bool
	// OnTotal, if set, is called after every accepted meter event and
	// every cancellation with the new running total of its customer,
	// meter and month, while the server holds its lock: the next event
	// waits until it returns.
	OnTotal func(RunningTotal)
}

// RunningTotal is the total of one customer, meter event name and month
// (UTC, by event timestamp) right after an event changed it.
type RunningTotal struct {
	Seq        int // 1, 2, ... in the order the server changed totals
	EventName  string
	Customer   string
	Period     time.Time // start of the month
	Identifier string    // the event accepted or cancelled
	Value      int64     // its value, negative for a cancellation
	Total      int64     // the running total after it
	At         time.Time // server clock
}

// Clock is a settable clock for Config.Now, shared with the code under
// test, so that a test can move past Stripe's 24-hour identifier memory.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock reading t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now reads the clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type meter struct {
	ID        string `json:"id"`
	Object    string `json:"object"`
	EventName string `json:"event_name"`
	Display   string `json:"display_name"`
	Status    string `json:"status"`
	Created   int64  `json:"created"`
	Livemode  bool   `json:"livemode"`
	Default   struct {
		Formula string `json:"formula"`
	} `json:"default_aggregation"`
	CustomerMapping struct {
		EventPayloadKey string `json:"event_payload_key"`
		Type            string `json:"type"`
	} `json:"customer_mapping"`
	ValueSettings struct {
		EventPayloadKey string `json:"event_payload_key"`
	} `json:"value_settings"`
}

// Event is a meter event the server accepted.
type Event struct {
	EventName  string
	Identifier string
	Customer   string
	Value      int64
	Timestamp  time.Time
	Received   time.Time
	Cancelled  bool
}

type idemEntry struct {
	params string
	status int
	body   []byte
	at     time.Time
}

// Server is the fake. It is an http.Handler.
type Server struct {
	cfg Config
	mux *http.ServeMux

	mu          sync.Mutex
	rng         *rand.Rand
	meters      []*meter
	events      []*Event
	identifiers map[string]*Event // event_name + identifier → event
	idem        map[string]idemEntry
	running     []RunningTotal
	calls       map[string]int // "METHOD path" → count, including faulted ones
	faults      map[string]int
	hang        chan struct{}
	balances    *balanceBook // balance.go
	// RejectCustomer, if set before the server is used, makes customer
	// balance transactions of the customers it returns true for fail as
	// an unknown customer (a permanent 400).
	RejectCustomer func(customer string) bool
}

// New returns a server.
func New(cfg Config) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.Faults) == 0 {
		cfg.Faults = AllFaults
	}
	s := &Server{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5eed)),
		identifiers: map[string]*Event{}, idem: map[string]idemEntry{}, calls: map[string]int{}, faults: map[string]int{},
		hang: make(chan struct{})}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST /v1/billing/meters", s.createMeter)
	s.mux.HandleFunc("GET /v1/billing/meters", s.listMeters)
	s.mux.HandleFunc("POST /v1/billing/meter_events", s.createEvent)
	s.mux.HandleFunc("POST /v1/billing/meter_event_adjustments", s.createAdjustment)
	s.mux.HandleFunc("GET /v1/billing/meters/{id}/event_summaries", s.summaries)
	s.mux.HandleFunc("POST /v1/customers/{customer}/balance_transactions", s.createBalanceTransaction)
	s.mux.HandleFunc("GET /v1/customers/{customer}/balance_transactions", s.listBalanceTransactions)
	return s
}

// SetReject replaces Config.Reject while running.
func (s *Server) SetReject(reject func(eventName, customer string) bool) {
	s.mu.Lock()
	s.cfg.Reject = reject
	s.mu.Unlock()
}

// SetFaultRate changes the fault rate while running.
func (s *Server) SetFaultRate(rate float64) {
	s.mu.Lock()
	s.cfg.FaultRate = rate
	s.mu.Unlock()
}

// Close releases requests held by timeout faults.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.hang:
	default:
		close(s.hang)
	}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer sk_") {
		writeError(w, http.StatusUnauthorized, "invalid_request_error", "", "Invalid API Key provided.")
		return
	}
	s.mu.Lock()
	s.calls[r.Method+" "+r.URL.Path]++
	var fault string
	if r.Method == http.MethodPost && s.cfg.FaultRate > 0 && s.rng.Float64() < s.cfg.FaultRate {
		fault = s.cfg.Faults[s.rng.IntN(len(s.cfg.Faults))]
		s.faults[fault]++
	}
	s.mu.Unlock()
	switch fault {
	case FaultRateLimit:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, "invalid_request_error", "rate_limit", "Request rate limit exceeded.")
		return
	case FaultLockTimeout:
		writeError(w, http.StatusTooManyRequests, "invalid_request_error", "lock_timeout", "This object cannot be accessed right now because another API request or Stripe process is currently accessing it.")
		return
	case FaultServerError:
		w.Header().Set("Stripe-Should-Retry", "true")
		writeError(w, http.StatusInternalServerError, "api_error", "", "An unknown error occurred.")
		return
	case FaultTimeout:
		rec := &recorder{header: http.Header{}}
		s.serve(rec, r)
		select { // processed; the answer never comes
		case <-r.Context().Done():
		case <-s.hang:
		case <-time.After(time.Minute):
		}
		return
	}
	s.serve(w, r)
}

// serve applies Idempotency-Key replay around the mux.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	if r.Method != http.MethodPost || key == "" {
		s.mux.ServeHTTP(w, r)
		return
	}
	_ = r.ParseForm()
	params := r.URL.Path + "?" + r.PostForm.Encode()
	now := s.cfg.Now()
	s.mu.Lock()
	if e, ok := s.idem[key]; ok && now.Sub(e.at) < 24*time.Hour {
		s.mu.Unlock()
		if e.params != params {
			writeError(w, http.StatusBadRequest, "idempotency_error", "", "Keys for idempotent requests can only be used with the same parameters they were first used with.")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Idempotent-Replayed", "true")
		w.WriteHeader(e.status)
		_, _ = w.Write(e.body)
		return
	}
	s.mu.Unlock()
	rec := &recorder{header: http.Header{}}
	s.mux.ServeHTTP(rec, r)
	// Like Stripe, save the result only when the endpoint executed: a
	// request that failed validation can be retried with the same key.
	if rec.status < 300 {
		s.mu.Lock()
		s.idem[key] = idemEntry{params: params, status: rec.status, body: rec.body, at: now}
		s.mu.Unlock()
	}
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.status)
	_, _ = w.Write(rec.body)
}

type recorder struct {
	header http.Header
	status int
	body   []byte
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body = append(r.body, b...)
	return len(b), nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, typ, code, msg string) {
	e := map[string]string{"type": typ, "message": msg}
	if code != "" {
		e["code"] = code
	}
	writeJSON(w, status, map[string]any{"error": e})
}

func (s *Server) createMeter(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	name := r.PostForm.Get("event_name")
	if name == "" || r.PostForm.Get("display_name") == "" {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_missing", "Missing required param: event_name or display_name.")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.meters {
		if m.EventName == name && m.Status == "active" {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "resource_already_exists", "An active meter with event_name "+name+" already exists.")
			return
		}
	}
	m := &meter{ID: fmt.Sprintf("mtr_test_%04d", len(s.meters)+1), Object: "billing.meter", EventName: name,
		Display: r.PostForm.Get("display_name"), Status: "active", Created: s.cfg.Now().Unix()}
	m.Default.Formula = orDefault(r.PostForm.Get("default_aggregation[formula]"), "sum")
	m.CustomerMapping.EventPayloadKey = orDefault(r.PostForm.Get("customer_mapping[event_payload_key]"), "stripe_customer_id")
	m.CustomerMapping.Type = "by_id"
	m.ValueSettings.EventPayloadKey = orDefault(r.PostForm.Get("value_settings[event_payload_key]"), "value")
	s.meters = append(s.meters, m)
	writeJSON(w, http.StatusOK, m)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (s *Server) listMeters(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	data := append([]*meter(nil), s.meters...)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "url": "/v1/billing/meters", "has_more": false, "data": data})
}

func (s *Server) meterByName(name string) *meter {
	for _, m := range s.meters {
		if m.EventName == name && m.Status == "active" {
			return m
		}
	}
	return nil
}

func (s *Server) createEvent(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	f := r.PostForm
	now := s.cfg.Now()
	name, id := f.Get("event_name"), f.Get("identifier")
	if name == "" {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_missing", "Missing required param: event_name.")
		return
	}
	if len(id) > 100 {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", "identifier must be at most 100 characters.")
		return
	}
	ts := now
	if t := f.Get("timestamp"); t != "" {
		sec, err := strconv.ParseInt(t, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "", "Invalid integer: timestamp.")
			return
		}
		ts = time.Unix(sec, 0)
	}
	if ts.Before(now.Add(-35 * 24 * time.Hour)) {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "timestamp_too_far_in_past", "The timestamp must be within the past 35 calendar days.")
		return
	}
	if ts.After(now.Add(5 * time.Minute)) {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "timestamp_in_future", "The timestamp cannot be more than 5 minutes in the future.")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.meterByName(name)
	if m == nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "resource_missing", "No active meter with event_name "+name+".")
		return
	}
	customer, rawValue := f.Get("payload["+m.CustomerMapping.EventPayloadKey+"]"), f.Get("payload["+m.ValueSettings.EventPayloadKey+"]")
	value, err := strconv.ParseInt(rawValue, 10, 64)
	if customer == "" || err != nil || value < 0 {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", "payload needs "+m.CustomerMapping.EventPayloadKey+" and a whole, non-negative "+m.ValueSettings.EventPayloadKey+".")
		return
	}
	if s.cfg.Reject != nil && s.cfg.Reject(name, customer) {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", "This meter event was rejected by the test server.")
		return
	}
	if id == "" {
		id = fmt.Sprintf("auto_%d", len(s.events)+1)
	}
	if prev, ok := s.identifiers[name+"\x00"+id]; ok && now.Sub(prev.Received) < 24*time.Hour {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "resource_already_exists", "An event with identifier "+id+" already exists.")
		return
	}
	e := &Event{EventName: name, Identifier: id, Customer: customer, Value: value, Timestamp: ts, Received: now}
	s.events = append(s.events, e)
	s.identifiers[name+"\x00"+id] = e
	s.changed(e, e.Value)
	if s.cfg.Latency > 0 {
		s.mu.Unlock()
		time.Sleep(s.cfg.Latency)
		s.mu.Lock()
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "billing.meter_event", "event_name": name, "identifier": id,
		"timestamp": ts.Unix(), "created": now.Unix(), "livemode": false, "payload": map[string]string{
			m.CustomerMapping.EventPayloadKey: customer, m.ValueSettings.EventPayloadKey: rawValue}})
}

func (s *Server) createAdjustment(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	f := r.PostForm
	name, id := f.Get("event_name"), f.Get("cancel[identifier]")
	if f.Get("type") != "cancel" || name == "" || id == "" {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", "An adjustment needs type=cancel, event_name and cancel[identifier].")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.identifiers[name+"\x00"+id]
	if !ok {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "resource_missing", "No meter event with identifier "+id+".")
		return
	}
	if s.cfg.Now().Sub(e.Received) > 24*time.Hour {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", "Meter events can only be cancelled within 24 hours.")
		return
	}
	if !e.Cancelled {
		e.Cancelled = true
		s.changed(e, -e.Value)
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "billing.meter_event_adjustment", "event_name": name, "status": "pending",
		"type": "cancel", "livemode": false, "cancel": map[string]string{"identifier": id}})
}

func (s *Server) summaries(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	customer := q.Get("customer")
	start, err1 := strconv.ParseInt(q.Get("start_time"), 10, 64)
	end, err2 := strconv.ParseInt(q.Get("end_time"), 10, 64)
	if customer == "" || err1 != nil || err2 != nil || start%60 != 0 || end%60 != 0 || end <= start {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", "customer, start_time and end_time (minute-aligned, start < end) are required.")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var m *meter
	for _, x := range s.meters {
		if x.ID == r.PathValue("id") {
			m = x
		}
	}
	if m == nil {
		writeError(w, http.StatusNotFound, "invalid_request_error", "resource_missing", "No such meter: "+r.PathValue("id"))
		return
	}
	total := s.total(m.EventName, customer, time.Unix(start, 0), time.Unix(end, 0))
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "has_more": false, "url": r.URL.Path, "data": []map[string]any{{
		"id": "mtrusg_" + strconv.FormatInt(start, 36), "object": "billing.meter_event_summary", "aggregated_value": float64(total),
		"start_time": start, "end_time": end, "meter": m.ID, "livemode": false,
	}}})
}

// total sums the visible, uncancelled events; s.mu is held.
func (s *Server) total(eventName, customer string, start, end time.Time) int64 {
	now := s.cfg.Now()
	var sum int64
	for _, e := range s.events {
		if e.EventName == eventName && e.Customer == customer && !e.Cancelled && !e.Timestamp.Before(start) && e.Timestamp.Before(end) &&
			now.Sub(e.Received) >= s.cfg.AggregationDelay {
			sum += e.Value
		}
	}
	return sum
}

// changed records the running total of e's customer, meter and month
// after e was accepted (value > 0) or cancelled; s.mu is held.
func (s *Server) changed(e *Event, value int64) {
	start := time.Date(e.Timestamp.UTC().Year(), e.Timestamp.UTC().Month(), 1, 0, 0, 0, 0, time.UTC)
	var total int64
	for _, x := range s.events {
		if x.EventName == e.EventName && x.Customer == e.Customer && !x.Cancelled && !x.Timestamp.Before(start) && x.Timestamp.Before(start.AddDate(0, 1, 0)) {
			total += x.Value
		}
	}
	r := RunningTotal{Seq: len(s.running) + 1, EventName: e.EventName, Customer: e.Customer, Period: start,
		Identifier: e.Identifier, Value: value, Total: total, At: s.cfg.Now()}
	s.running = append(s.running, r)
	if s.cfg.OnTotal != nil {
		s.cfg.OnTotal(r)
	}
}

// Running returns every running total recorded so far, in order.
func (s *Server) Running() []RunningTotal {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]RunningTotal(nil), s.running...)
}

// Total is what Stripe would bill customer for eventName in [start, end),
// counting events not yet aggregated too.
func (s *Server) Total(eventName, customer string, start, end time.Time) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sum int64
	for _, e := range s.events {
		if e.EventName == eventName && e.Customer == customer && !e.Cancelled && !e.Timestamp.Before(start) && e.Timestamp.Before(end) {
			sum += e.Value
		}
	}
	return sum
}

// Events returns a copy of every accepted event.
func (s *Server) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Event, len(s.events))
	for i, e := range s.events {
		out[i] = *e
	}
	return out
}

// Calls returns how many requests each "METHOD path" received.
func (s *Server) Calls() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.calls))
	for k, v := range s.calls {
		out[k] = v
	}
	return out
}

// Faults returns how many faults of each kind were injected.
func (s *Server) Faults() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.faults))
	for k, v := range s.faults {
		out[k] = v
	}
	return out
}

// EnsureMeter creates an active meter for eventName unless one exists.
func (s *Server) EnsureMeter(eventName string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.meterByName(eventName); m != nil {
		return m.ID
	}
	m := &meter{ID: fmt.Sprintf("mtr_test_%04d", len(s.meters)+1), Object: "billing.meter", EventName: eventName,
		Display: eventName, Status: "active", Created: s.cfg.Now().Unix()}
	m.Default.Formula, m.CustomerMapping.EventPayloadKey, m.CustomerMapping.Type, m.ValueSettings.EventPayloadKey = "sum", "stripe_customer_id", "by_id", "value"
	s.meters = append(s.meters, m)
	return m.ID
}
