package ingest_test

import (
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBillingCycles: a tenant without a cycle bills on UTC calendar
// months; PUT sets a cycle from a time on, refuses bad fields and changes
// that would move past periods, records nothing for the periods already
// in force, and audits each change; each answer matches the document.
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
		{"in the future", path, `{"anchor":"2026-11-14T09:00:00Z","interval":"month","effective_from":"2026-11-22T00:00:00Z"}`, 400, "in the future"},
	} {
		r := e.do("PUT", tt.path, adminKey, "application/json", tt.body)
		if r.status != tt.status || !strings.Contains(r.raw, tt.msg) {
			t.Errorf("%s: %d %s, want %d with %q", tt.name, r.status, r.raw, tt.status, tt.msg)
		}
	}

	// A month on the 14th at 09:23:11, from the 14th on: the period in
	// force now runs from the 14th to December 14th.
	r = e.do("PUT", path, adminKey, "application/json", `{"anchor":"2026-10-14T09:23:11Z","interval":"month","effective_from":"2026-11-14T09:23:11Z"}`)
	check("PUT /v1/admin/tenants/{tenant}/billing-cycle 200", r)
	a := read(r)
	if r.status != 200 || a.Calendar || !a.CurrentPeriod.Start.Equal(time.Date(2026, 11, 14, 9, 23, 11, 0, time.UTC)) ||
		!a.CurrentPeriod.End.Equal(time.Date(2026, 12, 14, 9, 23, 11, 0, time.UTC)) || len(a.History) != 1 || a.History[0].Source != "admin" {
		t.Fatalf("set: %d %s", r.status, r.raw)
	}
	// The same periods again, from a later boundary: nothing recorded.
	r = e.do("PUT", path, adminKey, "application/json", `{"anchor":"2027-01-14T09:23:11Z","interval":"month"}`)
	if a := read(r); r.status != 200 || len(a.History) != 1 {
		t.Fatalf("the same periods: %d %s, want the history unchanged", r.status, r.raw)
	}
	// Before the latest change: refused, past periods never move.
	r = e.do("PUT", path, adminKey, "application/json", `{"anchor":"2026-11-01T00:00:00Z","interval":"year","effective_from":"2026-11-10T00:00:00Z"}`)
	if r.status != 400 || !strings.Contains(r.raw, "effective_from") {
		t.Fatalf("before the latest change: %d %s", r.status, r.raw)
	}
	// A yearly cycle from now on.
	clock.Store(now.Add(time.Hour).UnixNano())
	r = e.do("PUT", path, adminKey, "application/json", `{"anchor":"2026-11-21T20:00:00Z","interval":"year"}`)
	if a := read(r); r.status != 200 || len(a.History) != 2 || !a.CurrentPeriod.End.Equal(time.Date(2027, 11, 21, 20, 0, 0, 0, time.UTC)) {
		t.Fatalf("yearly: %d %s", r.status, r.raw)
	}
	// Two changes, two audit rows.
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
	if len(audit.Entries) != 2 || audit.Entries[0].Target != "tenant:acme" || !strings.Contains(string(audit.Entries[0].After), `"interval":"`) {
		t.Fatalf("audit: %s, want two entries of tenant acme", r.raw)
	}
}
