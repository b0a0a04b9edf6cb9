package ingest_test

import (
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBillingCycles: a tenant without a cycle bills on UTC calendar
// months; PUT sets a cycle from a time at least 10 minutes ahead on
// (default: 10 minutes from now), refuses bad fields, earlier times (422)
// and changes before the latest one, records nothing for the periods
// already in force, and audits each change; each answer matches the
// document.
func TestBillingCycles(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	e := newEnv(t, envOpts{now: func() time.Time { return time.Unix(0, clock.Load()).UTC() }})
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{}`)
	check := answerChecker(t)
	path := "/v1/admin/tenants/acme/billing-cycle"
	type answer struct {
		Calendar      bool
		CurrentPeriod struct{ Start, End time.Time } `json:"current_period"`
		History       []struct {
			EffectiveFrom time.Time `json:"effective_from"`
			Source        string
		}
	}
	read := func(r response) answer {
		t.Helper()
		var a answer
		if err := json.Unmarshal([]byte(r.raw), &a); err != nil {
			t.Fatal(err)
		}
		return a
	}

	r := e.do("GET", path, adminKey, "", "")
	check("GET /v1/admin/tenants/{tenant}/billing-cycle 200", r)
	if a := read(r); r.status != 200 || !a.Calendar || !a.CurrentPeriod.Start.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) || len(a.History) != 0 {
		t.Fatalf("a tenant without a cycle: %d %s", r.status, r.raw)
	}
	for _, tt := range []struct {
		name, path, body string
		status           int
		msg              string
	}{
		{"unknown tenant", "/v1/admin/tenants/nobody/billing-cycle", `{"anchor":"2026-11-14T09:00:00Z","interval":"month"}`, 404, "no tenant"},
		{"bad interval", path, `{"anchor":"2026-11-14T09:00:00Z","interval":"fortnight"}`, 400, "interval must be day, week, month or year"},
		{"no anchor", path, `{"interval":"month"}`, 400, "anchor is required"},
		{"count over a year", path, `{"anchor":"2026-11-14T09:00:00Z","interval":"month","interval_count":13}`, 400, "interval_count must be 1-12"},
		{"a null", path, `{"anchor":"2026-11-14T09:00:00Z","interval":"month","interval_count":null}`, 400, "must not be null"},
		{"unknown field", path, `{"anchor":"2026-11-14T09:00:00Z","interval":"month","day":3}`, 400, "day"},
		{"in the future", path, `{"anchor":"2026-11-14T09:00:00Z","interval":"month","effective_from":"2026-11-22T00:00:00Z"}`, 200, `"effective_from":"2026-11-22T00:00:00Z"`},
	} {
		r := e.do("PUT", tt.path, adminKey, "application/json", tt.body)
		if r.status != tt.status || !strings.Contains(r.raw, tt.msg) {
			t.Errorf("%s: %d %s, want %d with %q", tt.name, r.status, r.raw, tt.status, tt.msg)
		}
	}

	// A change takes effect 10 minutes after it is recorded at the
	// earliest: usage of an earlier time may be counted already.
	for _, from := range []string{"2026-11-14T09:23:11Z", "2026-11-21T19:00:00Z", "2026-11-21T19:09:59Z"} {
		r := e.do("PUT", path, adminKey, "application/json", `{"anchor":"2026-10-14T09:23:11Z","interval":"month","effective_from":"`+from+`"}`)
		check("PUT /v1/admin/tenants/{tenant}/billing-cycle 422", r)
		if r.status != 422 || !strings.Contains(r.raw, "effective_from_too_early") {
			t.Fatalf("effective_from %s: %d %s, want 422 effective_from_too_early", from, r.status, r.raw)
		}
	}
	// Before the pending change from the 22nd: refused (past periods never
	// move); at its instant, a month on the 14th at 09:23:11 replaces it.
	r = e.do("PUT", path, adminKey, "application/json", `{"anchor":"2026-10-14T09:23:11Z","interval":"month","effective_from":"2026-11-21T19:10:00Z"}`)
	if r.status != 400 || !strings.Contains(r.raw, "effective_from") {
		t.Fatalf("before the pending change: %d %s", r.status, r.raw)
	}
	r = e.do("PUT", path, adminKey, "application/json", `{"anchor":"2026-10-14T09:23:11Z","interval":"month","effective_from":"2026-11-22T00:00:00Z"}`)
	check("PUT /v1/admin/tenants/{tenant}/billing-cycle 200", r)
	a := read(r)
	// Until it takes effect, the calendar month runs, ending at the change.
	if r.status != 200 || !a.Calendar || !a.CurrentPeriod.Start.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) ||
		!a.CurrentPeriod.End.Equal(time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)) || len(a.History) != 1 || a.History[0].Source != "admin" {
		t.Fatalf("set: %d %s", r.status, r.raw)
	}
	// Once in force: from the change to December 14th at 09:23:11.
	clock.Store(time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC).UnixNano())
	r = e.do("GET", path, adminKey, "", "")
	if a := read(r); a.Calendar || !a.CurrentPeriod.Start.Equal(time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)) ||
		!a.CurrentPeriod.End.Equal(time.Date(2026, 12, 14, 9, 23, 11, 0, time.UTC)) {
		t.Fatalf("in force: %d %s", r.status, r.raw)
	}
	// The same periods again, from a later boundary: nothing recorded.
	r = e.do("PUT", path, adminKey, "application/json", `{"anchor":"2027-01-14T09:23:11Z","interval":"month"}`)
	if a := read(r); r.status != 200 || len(a.History) != 1 {
		t.Fatalf("the same periods: %d %s, want the history unchanged", r.status, r.raw)
	}
	// A yearly cycle, by default 10 minutes from now.
	r = e.do("PUT", path, adminKey, "application/json", `{"anchor":"2026-11-21T20:00:00Z","interval":"year"}`)
	if a := read(r); r.status != 200 || len(a.History) != 2 || !a.History[1].EffectiveFrom.Equal(time.Date(2026, 11, 22, 1, 10, 0, 0, time.UTC)) {
		t.Fatalf("yearly: %d %s", r.status, r.raw)
	}
	clock.Store(time.Date(2026, 11, 22, 2, 0, 0, 0, time.UTC).UnixNano())
	r = e.do("GET", path, adminKey, "", "")
	if a := read(r); !a.CurrentPeriod.Start.Equal(time.Date(2026, 11, 22, 1, 10, 0, 0, time.UTC)) ||
		!a.CurrentPeriod.End.Equal(time.Date(2027, 11, 21, 20, 0, 0, 0, time.UTC)) {
		t.Fatalf("yearly in force: %d %s", r.status, r.raw)
	}
	// Three changes, three audit rows.
	r = e.do("GET", "/v1/admin/audit?action=billing_cycle.put", adminKey, "", "")
	var audit struct {
		Entries []struct {
			Action, Target string
			Before, After  json.RawMessage
		} `json:"entries"`
	}
	if err := json.Unmarshal([]byte(r.raw), &audit); err != nil || r.status != 200 {
		t.Fatalf("audit: %d %s", r.status, r.raw)
	}
	if len(audit.Entries) != 3 || audit.Entries[0].Target != "tenant:acme" || !strings.Contains(string(audit.Entries[0].After), `"interval":"`) {
		t.Fatalf("audit: %s, want three entries of tenant acme", r.raw)
	}
}
