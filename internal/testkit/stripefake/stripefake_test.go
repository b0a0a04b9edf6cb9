package stripefake_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type reply struct {
	status int
	header http.Header
	code   string // error.code, or error.type when there is no code
	body   map[string]any
}

type client struct {
	t   *testing.T
	url string
}

func (c client) do(ctx context.Context, method, path string, form url.Values, header map[string]string) reply {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer sk_test_fake")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{status: -1, code: err.Error()}
	}
	defer resp.Body.Close()
	r := reply{status: resp.StatusCode, header: resp.Header}
	_ = json.NewDecoder(resp.Body).Decode(&r.body)
	if e, ok := r.body["error"].(map[string]any); ok {
		r.code, _ = e["code"].(string)
		if r.code == "" {
			r.code, _ = e["type"].(string)
		}
	}
	return r
}

func (c client) event(ts time.Time, id string, value int, header map[string]string) reply {
	c.t.Helper()
	f := url.Values{"event_name": {"api_calls"}, "payload[stripe_customer_id]": {"cus_1"},
		"payload[value]": {strconv.Itoa(value)}, "timestamp": {strconv.FormatInt(ts.Unix(), 10)}}
	if id != "" {
		f.Set("identifier", id)
	}
	return c.do(context.Background(), "POST", "/v1/billing/meter_events", f, header)
}

func (c client) summary(meterID string, start, end time.Time) float64 {
	c.t.Helper()
	r := c.do(context.Background(), "GET", "/v1/billing/meters/"+meterID+"/event_summaries?customer=cus_1&start_time="+
		strconv.FormatInt(start.Unix(), 10)+"&end_time="+strconv.FormatInt(end.Unix(), 10), nil, nil)
	data, _ := r.body["data"].([]any)
	if r.status != 200 || len(data) != 1 {
		c.t.Fatalf("summary: %d %v", r.status, r.body)
	}
	v, _ := data[0].(map[string]any)["aggregated_value"].(float64)
	return v
}

func newServer(t *testing.T, cfg stripefake.Config) (*stripefake.Server, client, *clock) {
	clk := &clock{t: time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)}
	if cfg.Now == nil {
		cfg.Now = clk.Now
	}
	s := stripefake.New(cfg)
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	t.Cleanup(s.Close)
	return s, client{t: t, url: hs.URL}, clk
}

func TestMeterEventRules(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		ts         time.Time
		identifier string
		value      int
		wantStatus int
		wantCode   string
	}{
		{"inside the window", now.Add(-time.Hour), "a", 5, 200, ""},
		{"34 days old", now.Add(-34 * 24 * time.Hour), "b", 5, 200, ""},
		{"36 days old", now.Add(-36 * 24 * time.Hour), "c", 5, 400, "timestamp_too_far_in_past"},
		{"4 minutes ahead", now.Add(4 * time.Minute), "d", 5, 200, ""},
		{"6 minutes ahead", now.Add(6 * time.Minute), "e", 5, 400, "timestamp_in_future"},
		{"identifier of 100 characters", now, strings.Repeat("x", 100), 5, 200, ""},
		{"identifier of 101 characters", now, strings.Repeat("x", 101), 5, 400, "invalid_request_error"},
		{"negative value", now, "f", -1, 400, "invalid_request_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c, _ := newServer(t, stripefake.Config{})
			s.EnsureMeter("api_calls")
			r := c.event(tt.ts, tt.identifier, tt.value, nil)
			if r.status != tt.wantStatus || r.code != tt.wantCode {
				t.Fatalf("got %d %q, want %d %q: %v", r.status, r.code, tt.wantStatus, tt.wantCode, r.body)
			}
			if want := map[bool]int{true: 1, false: 0}[tt.wantStatus == 200]; len(s.Events()) != want {
				t.Fatalf("%d events stored, want %d", len(s.Events()), want)
			}
		})
	}
}

func TestRequestsNeedASecretKey(t *testing.T) {
	_, c, _ := newServer(t, stripefake.Config{})
	req, _ := http.NewRequest("GET", c.url+"/v1/billing/meters", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no key: %d, want 401", resp.StatusCode)
	}
}

// An identifier counts once for 24 hours, as Stripe dedups it.
func TestIdentifierDedup(t *testing.T) {
	s, c, clk := newServer(t, stripefake.Config{})
	id := s.EnsureMeter("api_calls")
	if r := c.event(clk.Now(), "push-1", 10, nil); r.status != 200 {
		t.Fatalf("first: %d %v", r.status, r.body)
	}
	clk.Add(23 * time.Hour)
	if r := c.event(clk.Now(), "push-1", 10, nil); r.status != 400 || r.code != "resource_already_exists" {
		t.Fatalf("same identifier 23 h later: %d %q, want 400 resource_already_exists", r.status, r.code)
	}
	clk.Add(2 * time.Hour)
	if r := c.event(clk.Now(), "push-1", 10, nil); r.status != 200 {
		t.Fatalf("same identifier 25 h later: %d %v, want accepted", r.status, r.body)
	}
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if got := c.summary(id, start, start.AddDate(0, 1, 0)); got != 20 {
		t.Fatalf("summary %v, want 20 (the duplicate inside 24 h not counted)", got)
	}
}

func TestIdempotencyKey(t *testing.T) {
	s, c, clk := newServer(t, stripefake.Config{})
	s.EnsureMeter("api_calls")
	key := map[string]string{"Idempotency-Key": "k1"}
	first := c.event(clk.Now(), "push-1", 10, key)
	again := c.event(clk.Now(), "push-1", 10, key)
	if first.status != 200 || again.status != 200 || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay of a key: %d then %d (replayed %q)", first.status, again.status, again.header.Get("Idempotent-Replayed"))
	}
	if first.body["identifier"] != again.body["identifier"] || first.body["created"] != again.body["created"] {
		t.Fatalf("replayed body differs: %v vs %v", first.body, again.body)
	}
	if r := c.event(clk.Now(), "push-1", 11, key); r.status != 400 || r.code != "idempotency_error" {
		t.Fatalf("same key, other parameters: %d %q, want 400 idempotency_error", r.status, r.code)
	}
	if n := len(s.Events()); n != 1 {
		t.Fatalf("%d events stored, want 1", n)
	}
	// A request that failed is not saved: the same key may be retried.
	s.SetReject(func(string, string) bool { return true })
	k2 := map[string]string{"Idempotency-Key": "k2"}
	if r := c.event(clk.Now(), "push-2", 5, k2); r.status != 400 {
		t.Fatalf("rejected: %d", r.status)
	}
	s.SetReject(nil)
	if r := c.event(clk.Now(), "push-2", 5, k2); r.status != 200 || r.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("retry of a failed key: %d, replayed %q; want executed", r.status, r.header.Get("Idempotent-Replayed"))
	}
}

func TestSummariesAggregationAndCancel(t *testing.T) {
	s, c, clk := newServer(t, stripefake.Config{AggregationDelay: time.Minute})
	id := s.EnsureMeter("api_calls")
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	end := start.AddDate(0, 1, 0)
	c.event(clk.Now(), "a", 7, nil)
	c.event(clk.Now(), "b", 3, nil)
	if got := c.summary(id, start, end); got != 0 {
		t.Fatalf("summary before aggregation: %v, want 0", got)
	}
	if got := s.Total("api_calls", "cus_1", start, end); got != 10 {
		t.Fatalf("Total counts what is not yet aggregated: %d, want 10", got)
	}
	clk.Add(time.Minute)
	if got := c.summary(id, start, end); got != 10 {
		t.Fatalf("summary after aggregation: %v, want 10", got)
	}
	cancel := url.Values{"type": {"cancel"}, "event_name": {"api_calls"}, "cancel[identifier]": {"a"}}
	if r := c.do(context.Background(), "POST", "/v1/billing/meter_event_adjustments", cancel, nil); r.status != 200 {
		t.Fatalf("cancel: %d %v", r.status, r.body)
	}
	if got := c.summary(id, start, end); got != 3 {
		t.Fatalf("summary after cancel: %v, want 3", got)
	}
	clk.Add(25 * time.Hour)
	cancel.Set("cancel[identifier]", "b")
	if r := c.do(context.Background(), "POST", "/v1/billing/meter_event_adjustments", cancel, nil); r.status != 400 {
		t.Fatalf("cancel after 24 h: %d, want 400", r.status)
	}
	bad := c.do(context.Background(), "GET", "/v1/billing/meters/"+id+"/event_summaries?customer=cus_1&start_time=61&end_time=120", nil, nil)
	if bad.status != 400 {
		t.Fatalf("unaligned summary window: %d, want 400", bad.status)
	}
}

func TestFaults(t *testing.T) {
	tests := []struct {
		fault      string
		wantStatus int
		wantCode   string
		wantHeader [2]string
		stored     int // the event is recorded even though the client never learns it
	}{
		{stripefake.FaultRateLimit, 429, "rate_limit", [2]string{"Retry-After", "1"}, 0},
		{stripefake.FaultLockTimeout, 429, "lock_timeout", [2]string{}, 0},
		{stripefake.FaultServerError, 500, "api_error", [2]string{"Stripe-Should-Retry", "true"}, 0},
		{stripefake.FaultTimeout, -1, "", [2]string{}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.fault, func(t *testing.T) {
			s, c, clk := newServer(t, stripefake.Config{FaultRate: 1, Faults: []string{tt.fault}})
			s.EnsureMeter("api_calls")
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			f := url.Values{"event_name": {"api_calls"}, "identifier": {"x"}, "payload[stripe_customer_id]": {"cus_1"},
				"payload[value]": {"1"}, "timestamp": {strconv.FormatInt(clk.Now().Unix(), 10)}}
			r := c.do(ctx, "POST", "/v1/billing/meter_events", f, nil)
			if r.status != tt.wantStatus {
				t.Fatalf("status %d (%s), want %d", r.status, r.code, tt.wantStatus)
			}
			if tt.wantStatus > 0 && r.code != tt.wantCode {
				t.Fatalf("code %q, want %q", r.code, tt.wantCode)
			}
			if tt.wantStatus < 0 && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				t.Fatalf("a timeout fault answered: %v", r.code)
			}
			if h := tt.wantHeader; h[0] != "" && r.header.Get(h[0]) != h[1] {
				t.Fatalf("%s = %q, want %q", h[0], r.header.Get(h[0]), h[1])
			}
			if n := len(s.Events()); n != tt.stored {
				t.Fatalf("%d events stored, want %d", n, tt.stored)
			}
			if s.Faults()[tt.fault] != 1 {
				t.Fatalf("faults counted: %v", s.Faults())
			}
			// GETs are never faulted.
			if r := c.do(context.Background(), "GET", "/v1/billing/meters", nil, nil); r.status != 200 {
				t.Fatalf("GET faulted: %d", r.status)
			}
		})
	}
}

// The same seed injects the same faults in the same order, and the rate
// is honoured.
func TestFaultInjectionIsSeededAndAtRate(t *testing.T) {
	run := func() map[string]int {
		s, c, clk := newServer(t, stripefake.Config{FaultRate: 0.1, Seed: 7,
			Faults: []string{stripefake.FaultRateLimit, stripefake.FaultLockTimeout, stripefake.FaultServerError}})
		s.EnsureMeter("api_calls")
		for i := range 2000 {
			c.event(clk.Now(), "id-"+strconv.Itoa(i), 1, nil)
		}
		return s.Faults()
	}
	a, b := run(), run()
	total := 0
	for k, v := range a {
		if b[k] != v {
			t.Fatalf("same seed, different faults: %v vs %v", a, b)
		}
		total += v
	}
	if total < 140 || total > 260 {
		t.Fatalf("%d faults in 2000 requests at rate 0.1", total)
	}
}

func TestMeters(t *testing.T) {
	_, c, _ := newServer(t, stripefake.Config{})
	create := url.Values{"event_name": {"tokens"}, "display_name": {"Tokens"}, "default_aggregation[formula]": {"sum"}}
	r := c.do(context.Background(), "POST", "/v1/billing/meters", create, nil)
	if r.status != 200 || r.body["event_name"] != "tokens" || r.body["status"] != "active" {
		t.Fatalf("create: %d %v", r.status, r.body)
	}
	if r := c.do(context.Background(), "POST", "/v1/billing/meters", create, nil); r.status != 400 || r.code != "resource_already_exists" {
		t.Fatalf("second active meter for one event name: %d %q", r.status, r.code)
	}
	if r := c.do(context.Background(), "POST", "/v1/billing/meters", url.Values{"event_name": {"x"}}, nil); r.status != 400 || r.code != "parameter_missing" {
		t.Fatalf("no display name: %d %q", r.status, r.code)
	}
	list := c.do(context.Background(), "GET", "/v1/billing/meters", nil, nil)
	if data, _ := list.body["data"].([]any); list.status != 200 || len(data) != 1 {
		t.Fatalf("list: %d %v", list.status, list.body)
	}
	f := url.Values{"event_name": {"no_such_meter"}, "payload[stripe_customer_id]": {"cus_1"}, "payload[value]": {"1"}}
	if r := c.do(context.Background(), "POST", "/v1/billing/meter_events", f, nil); r.status != 400 || r.code != "resource_missing" {
		t.Fatalf("event for a meter that does not exist: %d %q", r.status, r.code)
	}
}

// Running totals are recorded after every accepted event and every
// cancellation, per customer, meter and month; duplicates inside 24 hours
// record nothing, the same identifier after 24 hours counts again.
func TestRunningTotals(t *testing.T) {
	t.Parallel()
	clk := stripefake.NewClock(time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC))
	var seen []stripefake.RunningTotal
	s, c, _ := newServer(t, stripefake.Config{Now: clk.Now, OnTotal: func(r stripefake.RunningTotal) { seen = append(seen, r) }})
	s.EnsureMeter("api_calls")
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		name    string
		do      func() reply
		status  int
		total   int64 // of the last record
		records int   // records so far
	}{
		{"first event", func() reply { return c.event(clk.Now(), "a", 7, nil) }, 200, 7, 1},
		{"second event", func() reply { return c.event(clk.Now(), "b", 3, nil) }, 200, 10, 2},
		{"duplicate", func() reply { return c.event(clk.Now(), "a", 7, nil) }, 400, 10, 2},
		{"cancel", func() reply {
			return c.do(context.Background(), "POST", "/v1/billing/meter_event_adjustments",
				url.Values{"type": {"cancel"}, "event_name": {"api_calls"}, "cancel[identifier]": {"b"}}, nil)
		}, 200, 7, 3},
		{"other month", func() reply { return c.event(nov.Add(-time.Hour), "c", 100, nil) }, 200, 100, 4},
		{"same identifier after 25 h", func() reply { clk.Advance(25 * time.Hour); return c.event(clk.Now(), "a", 7, nil) }, 200, 14, 5},
	}
	for _, st := range steps {
		r := st.do()
		if r.status != st.status {
			t.Fatalf("%s: %d %v, want %d", st.name, r.status, r.body, st.status)
		}
		run := s.Running()
		if len(run) != st.records || len(seen) != st.records {
			t.Fatalf("%s: %d records (%d seen by OnTotal), want %d", st.name, len(run), len(seen), st.records)
		}
		if last := run[len(run)-1]; last.Total != st.total || last.Seq != st.records || last != seen[len(seen)-1] {
			t.Fatalf("%s: last record %+v (OnTotal saw %+v), want total %d", st.name, last, seen[len(seen)-1], st.total)
		}
	}
	if run := s.Running(); run[3].Period != nov.AddDate(0, -1, 0) || run[2].Value != -3 || run[4].Period != nov {
		t.Fatalf("periods or values wrong: %+v", run)
	}
}
