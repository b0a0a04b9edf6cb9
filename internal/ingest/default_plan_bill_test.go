package ingest_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/topics"
)

// seedDefaultPlanBill defines the plans starter (api_calls at 0.01,
// currency eur) and big (api_calls at 0.001), makes acme a tenant without
// a plan assignment and paying one assigned big, and counts 150 api_calls
// for each in the month of now.
func seedDefaultPlanBill(t *testing.T, e *env, now time.Time) {
	t.Helper()
	for plan, body := range map[string]string{
		"starter": `{"currency":"eur","quotas":[{"metric":"api_calls","limit":1000,"unit_price":"0.01"}]}`,
		"big":     `{"quotas":[{"metric":"api_calls","limit":100000,"unit_price":"0.001"}]}`,
	} {
		if r := e.do("PUT", "/v1/admin/plans/"+plan, adminKey, "application/json", body); r.status != http.StatusOK && r.status != http.StatusCreated {
			t.Fatalf("PUT plan %s: %d %s", plan, r.status, r.raw)
		}
	}
	for tenant, body := range map[string]string{"acme": `{}`, "paying": `{"plan":"big"}`} {
		if r := e.do("PUT", "/v1/admin/tenants/"+tenant, adminKey, "application/json", body); r.status != http.StatusOK {
			t.Fatalf("PUT tenant %s: %d %s", tenant, r.status, r.raw)
		}
	}
	agg := rollup.New(e.db.Pool, rollup.Config{Group: "g", Topic: topics.UsageEvents, Logger: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return now }})
	var recs []rollup.Record
	for i, tenant := range []string{"acme", "paying"} {
		ev := events.Event{ID: "e-" + tenant, Tenant: tenant, Metric: "api_calls", Value: 150, Time: now.Add(-time.Minute).Truncate(time.Second)}
		recs = append(recs, rollup.Record{Offset: int64(i), Key: []byte(tenant), Value: ev.AppendJSON(nil), Time: now})
	}
	if _, err := agg.Apply(context.Background(), 0, -1, recs); err != nil {
		t.Fatal(err)
	}
}

// billAnswer is what the bill tests read of GET /v1/bill.
type billAnswer struct {
	Plan        *string `json:"plan"`
	PlanVersion int     `json:"plan_version"`
	PlanSource  *string `json:"plan_source"`
	Currency    string  `json:"currency"`
	Total       string  `json:"total"`
	Lines       []struct {
		Metric string `json:"metric"`
		Used   int64  `json:"used"`
		Amount string `json:"amount"`
	} `json:"lines"`
}

func (b billAnswer) String() string {
	str := func(p *string) string {
		if p == nil {
			return "null"
		}
		return *p
	}
	s := fmt.Sprintf("plan=%s v%d source=%s %s total=%s", str(b.Plan), b.PlanVersion, str(b.PlanSource), b.Currency, b.Total)
	for _, l := range b.Lines {
		s += fmt.Sprintf(" [%s %d %s]", l.Metric, l.Used, l.Amount)
	}
	return s
}

// TestBillOfATenantWithoutAssignment: GET /v1/bill prices a tenant with
// no plan assignment in force at DEFAULT_PLAN's version in force (as GET
// /v1/quotas limits it and the biller bills it), in its currency, and
// names the plan and where it came from; without a default plan such a
// tenant has no plan and no lines, as before. A tenant with an
// assignment is billed by it either way.
func TestBillOfATenantWithoutAssignment(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC()
	for _, tc := range []struct {
		defaultPlan string
		want        map[string]string
	}{
		{"starter", map[string]string{
			"acme":   "plan=starter v1 source=default eur total=1.50 [api_calls 150 1.50]",
			"paying": "plan=big v1 source=admin usd total=0.15 [api_calls 150 0.15]",
		}},
		{"", map[string]string{
			"acme":   "plan=null v0 source=null usd total=0.00",
			"paying": "plan=big v1 source=admin usd total=0.15 [api_calls 150 0.15]",
		}},
	} {
		t.Run("default="+tc.defaultPlan, func(t *testing.T) {
			t.Parallel()
			e := newUIEnvDefault(t, now, tc.defaultPlan)
			seedDefaultPlanBill(t, e, now)
			for tenant, want := range tc.want {
				r := e.do("GET", "/v1/bill/"+tenant, adminKey, "", "")
				if r.status != http.StatusOK {
					t.Fatalf("GET /v1/bill/%s: %d %s", tenant, r.status, r.raw)
				}
				var b billAnswer
				mustJSON(t, r.raw, &b)
				if b.String() != want {
					t.Errorf("bill of %s: %s, want %s", tenant, b, want)
				}
				// The bill names the plan GET /v1/quotas names.
				var q struct {
					Plan       *string `json:"plan"`
					PlanSource *string `json:"plan_source"`
				}
				mustJSON(t, e.do("GET", "/v1/quotas/"+tenant, adminKey, "", "").raw, &q)
				if fmt.Sprint(deref(q.Plan), deref(q.PlanSource)) != fmt.Sprint(deref(b.Plan), deref(b.PlanSource)) {
					t.Errorf("%s: quotas name plan %q (%q), the bill %q (%q)", tenant, deref(q.Plan), deref(q.PlanSource), deref(b.Plan), deref(b.PlanSource))
				}
			}
		})
	}
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// TestUsagePageShowsTheDefaultPlanBill: the usage page of a tenant
// without a plan assignment shows the default plan, its bill line, total
// and currency (in capitals), as the API answers them; without a default plan, no plan
// and an empty bill.
func TestUsagePageShowsTheDefaultPlanBill(t *testing.T) {
	now := time.Now().UTC()
	for _, tc := range []struct {
		defaultPlan, plan, currency, total string
		lines                              int
	}{
		{"starter", "starter", "EUR", "1.50", 1},
		{"", "none", "USD", "0.00", 0},
	} {
		t.Run("default="+tc.defaultPlan, func(t *testing.T) {
			e := newUIEnvDefault(t, now, tc.defaultPlan)
			seedDefaultPlanBill(t, e, now)
			_, key := e.createKey(`{"tenant":"acme","scope":"read"}`)
			ctx := openPage(t, e, key)
			type shown struct {
				Plan, Currency, Total string
				Lines                 [][]string
			}
			got, err := chromedp.Run(ctx, chromedp.Evaluate[shown](`({
				Plan: document.getElementById("plan").textContent,
				Currency: document.getElementById("currency").textContent,
				Total: document.getElementById("bill-total").textContent,
				Lines: [...document.querySelectorAll('[data-testid="bill-line"]')].map(tr => [...tr.cells].map(td => td.textContent)),
			})`))
			if err != nil {
				t.Fatal(err)
			}
			if got.Plan != tc.plan || got.Currency != tc.currency || got.Total != tc.total || len(got.Lines) != tc.lines {
				t.Fatalf("the page shows %+v, want plan %s, %s, total %s, %d lines", got, tc.plan, tc.currency, tc.total, tc.lines)
			}
			if tc.lines == 1 && (got.Lines[0][0] != "api_calls" || got.Lines[0][3] != "150" || got.Lines[0][4] != "1.50") {
				t.Errorf("bill line %q, want api_calls used 150 for 1.50", got.Lines[0])
			}
		})
	}
}
