package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/usagemeter/metering/internal/httpguard"
)

// chromium returns Debian's Chromium, which `make test` installs.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no Chromium found: run `make test` (it installs Debian's chromium), or apt-get install chromium")
	return ""
}

// browser starts headless Chromium for one test and returns its context.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium(t)), chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// recordCSPViolations makes every page the browser opens collect its
// Content-Security-Policy violations in window.cspViolations, from before
// its first script runs.
func recordCSPViolations() chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: `
			window.cspViolations = [];
			document.addEventListener("securitypolicyviolation", e =>
				window.cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " " + e.sourceFile + ":" + e.lineNumber));`})
		return err
	})
}

// TestUsagePageShowsWhatTheAPISays opens /ui in headless Chromium with a
// read-only tenant key and checks that every number on the page equals
// the API's, under the page's Content-Security-Policy: the page breaks
// none of its rules, and the policy is enforced (an inline script added
// to the page does not run).
func TestUsagePageShowsWhatTheAPISays(t *testing.T) {
	// The projected bill scales by the time elapsed in the month, so the
	// page and the test's own read must see one instant.
	now := time.Now().UTC()
	e := newEnv(t, envOpts{now: func() time.Time { return now }})
	_, key := e.createKey(`{"tenant":"acme","scope":"read"}`)
	e.do("PUT", "/v1/admin/plans/free", adminKey, "application/json", `{"currency":"eur","quotas":[
		{"metric":"api_calls","limit":1000,"burst_percent":20,"hard":true,"unit_price":"0.002"},
		{"metric":"tokens","limit":null,"unit_price":"0.0000015"}]}`)
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"free"}`)
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	day := now.Truncate(24 * time.Hour)
	e.db.Exec(t, `INSERT INTO usage_windows (tenant, metric, granularity, window_start, value, events) VALUES
		('acme', 'api_calls', 'month', $1, 1250, 1250), ('acme', 'api_calls', 'day', $2, 1250, 1250),
		('acme', 'tokens', 'month', $1, 987654, 3), ('acme', 'tokens', 'day', $2, 987654, 3)`, month, day)
	e.db.Exec(t, `INSERT INTO quota_breaches (breach_id, tenant, metric, period_start, period_end, threshold, quota_limit, value) VALUES
		('b1', 'acme', 'api_calls', $1, $2, 'warning', 1000, 800), ('b2', 'acme', 'api_calls', $1, $2, 'exceeded', 1000, 1000),
		('b3', 'acme', 'api_calls', $1, $2, 'blocked', 1000, 1201)`, month, month.AddDate(0, 1, 0))

	ctx := browser(t)
	if err := chromedp.Do(ctx,
		recordCSPViolations(),
		chromedp.Navigate(e.srv.URL+"/ui?tenant=acme#key="+key),
		chromedp.WaitVisible(`body[data-ready="true"], body[data-error]`),
	); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	errText, err := chromedp.Run(ctx, chromedp.TextContent("#error"))
	if err != nil {
		t.Fatal(err)
	}
	shown, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]string](
		`Object.fromEntries([...document.querySelectorAll('[data-testid]')].map(e => [e.dataset.testid, e.textContent.trim()]))`))
	if err != nil {
		t.Fatal(err)
	}
	breaches, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('[data-testid="breach"]').length`))
	if err != nil {
		t.Fatal(err)
	}
	if errText != "" {
		t.Fatalf("the page shows an error: %s", errText)
	}
	violations, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.cspViolations`))
	if err != nil {
		t.Fatal(err)
	}
	if len(violations) > 0 {
		t.Errorf("the page violates its own Content-Security-Policy: %v", violations)
	}
	// The control: an inline script, which the policy must block.
	ran, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => {
		const s = document.createElement("script");
		s.textContent = "window.inlineRan = true";
		document.body.appendChild(s);
		return window.inlineRan === true;
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	if ran {
		t.Error("an inline script ran on the usage page: its Content-Security-Policy allows inline script")
	}
	resp, err := http.Get(e.srv.URL + "/ui?tenant=acme")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if missing := httpguard.Missing(resp.Header); len(missing) > 0 {
		t.Errorf("/ui lacks %v", missing)
	}

	// What the API says.
	want := map[string]string{"tenant": "acme"}
	var q struct {
		Plan   string
		Quotas []struct {
			Metric           string
			Limit, Remaining *int64
			Used             int64
			State            string
		}
	}
	mustJSON(t, e.do("GET", "/v1/quotas/acme", key, "", "").raw, &q)
	want["plan"] = q.Plan
	str := func(n *int64) string {
		if n == nil {
			return "unlimited"
		}
		return fmt.Sprint(*n)
	}
	for _, x := range q.Quotas {
		want["quota-limit-"+x.Metric] = str(x.Limit)
		want["quota-used-"+x.Metric] = fmt.Sprint(x.Used)
		want["quota-remaining-"+x.Metric] = str(x.Remaining)
		want["quota-state-"+x.Metric] = x.State
		var u struct{ Total int64 }
		mustJSON(t, e.do("GET", "/v1/usage?tenant=acme&metric="+x.Metric+"&window=day&from="+month.Format(time.RFC3339), key, "", "").raw, &u)
		want["usage-total-"+x.Metric] = fmt.Sprint(u.Total)
	}
	var b struct {
		Lines []struct {
			Metric, UnitPrice, Amount, ProjectedAmount string
			Used, ProjectedUsed                        int64
		}
		Total, ProjectedTotal string
	}
	raw := e.do("GET", "/v1/bill/acme", key, "", "").raw
	raw = strings.NewReplacer(`"unit_price"`, `"unitprice"`, `"projected_amount"`, `"projectedamount"`, `"projected_used"`, `"projectedused"`, `"projected_total"`, `"projectedtotal"`).Replace(raw)
	mustJSON(t, raw, &b)
	for _, l := range b.Lines {
		want["bill-price-"+l.Metric] = l.UnitPrice
		want["bill-used-"+l.Metric] = fmt.Sprint(l.Used)
		want["bill-amount-"+l.Metric] = l.Amount
		want["bill-projected-used-"+l.Metric] = fmt.Sprint(l.ProjectedUsed)
		want["bill-projected-"+l.Metric] = l.ProjectedAmount
	}
	want["bill-total"], want["bill-projected-total"] = b.Total, b.ProjectedTotal
	if b.Total != "3.98" { // 1250 × 0.002 + 987654 × 0.0000015 = 2.50 + 1.48
		t.Errorf("bill total %s, want 3.98", b.Total)
	}
	for k, v := range want {
		if shown[k] != v {
			t.Errorf("%s: the page shows %q, the API says %q", k, shown[k], v)
		}
	}
	if breaches != 3 {
		t.Errorf("the page lists %d breaches, want 3", breaches)
	}
	if shown["quota-state-api_calls"] != "blocked" {
		t.Errorf("api_calls state %q", shown["quota-state-api_calls"])
	}
}

// TestUsagePageAsksForAReadOnlyKey: opened without a key, the page asks
// for a read-only tenant key and says why, rather than for "an API key".
func TestUsagePageAsksForAReadOnlyKey(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := browser(t)
	if err := chromedp.Do(ctx,
		recordCSPViolations(),
		chromedp.Navigate(e.srv.URL+"/ui?tenant=acme"),
		chromedp.WaitVisible(`#login`),
	); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	form, err := chromedp.Run(ctx, chromedp.TextContent("#login"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"read-only", `"scope":"read"`, "Read-only tenant key"} {
		if !strings.Contains(form, want) {
			t.Errorf("the key form does not say %q: %q", want, form)
		}
	}
	violations, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.cspViolations`))
	if err != nil {
		t.Fatal(err)
	}
	if len(violations) > 0 {
		t.Errorf("the key form violates the page's Content-Security-Policy: %v", violations)
	}
}

func mustJSON(t *testing.T, raw string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(raw), v); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
}
