package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/ratelimit"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/topics"
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

// newUIEnv is an API that only reads (no Kafka), with conflicts, whose
// clock stands still at now.
func newUIEnv(t *testing.T, now time.Time) *env {
	t.Helper()
	return newUIEnvDefault(t, now, "")
}

// newUIEnvDefault is newUIEnv with defaultPlan as DEFAULT_PLAN ("" for
// none).
func newUIEnvDefault(t *testing.T, now time.Time, defaultPlan string) *env {
	t.Helper()
	db := pgtest.New(t)
	st := accounts.New(db.Pool)
	api := ingest.New(ingest.Options{
		Store: st, Auth: auth.New(st, adminKey), Usage: usagedata.NewReader(db.Pool).WithDefaultPlan(defaultPlan), Conflicts: usagedata.NewConflictReader(db.Pool), DB: db.Pool,
		KeyLimiter: ratelimit.New(1e6, 1e6), IPLimiter: ratelimit.New(1e6, 1e6), MaxBodyBytes: 1 << 20,
		Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(), Now: func() time.Time { return now },
	})
	srv := httptest.NewServer(api.Handler(http.NewServeMux()))
	t.Cleanup(srv.Close)
	return &env{t: t, db: db, srv: srv, store: st}
}

// hostileID is an event id (printable ASCII, so a valid one) that is
// markup: the page must show it as text.
const hostileID = `<img src=x onerror=alert(1)>`

// seedConflicts records conflicting resends of acme through the
// aggregator, one of each resolution but counted: hostileID raised,
// order-2 kept, order-3 held, order-4 held and then dismissed.
func seedConflicts(t *testing.T, e *env, now time.Time) {
	t.Helper()
	ctx := context.Background()
	agg := rollup.New(e.db.Pool, rollup.Config{Group: "g", Topic: topics.UsageEvents, Logger: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return now }})
	at := now.Add(-time.Minute).Truncate(time.Second)
	ev := func(id string, value int64, at time.Time) events.Event {
		return events.Event{ID: id, Tenant: "acme", Metric: "exports", Value: value, Time: at}
	}
	var recs []rollup.Record
	for _, x := range []events.Event{
		ev(hostileID, 3, at), ev(hostileID, 7, at), // raised: 7, 3 counted before
		ev("order-2", 5, at), ev("order-2", 2, at), // kept
		ev("order-3", 4, at), ev("order-3", 4, at.Add(-time.Hour)), // held: another time
		ev("order-4", 1, at), ev("order-4", 9, at.Add(-time.Hour)), // held, then dismissed
	} {
		recs = append(recs, rollup.Record{Offset: int64(len(recs)), Key: []byte("acme"), Value: x.AppendJSON(nil), Time: now})
	}
	res, err := agg.Apply(ctx, 0, -1, recs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Raised != 1 || res.Kept != 1 || res.Held != 2 {
		t.Fatalf("seeding conflicts: %+v", res)
	}
	held, err := usagedata.NewConflictReader(e.db.Pool).List(ctx, usagedata.ConflictFilter{Tenant: "acme", Status: "held"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range held {
		if c.EventID == "order-4" {
			if _, err := agg.ResolveConflict(ctx, c.ID, usagedata.ResolutionDismissed, "ops", "a test order"); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// pageConflicts reads the page's table of recent conflicts, cell by cell,
// and how many elements the table holds that the page did not make
// (markup from an event id would add some).
func pageConflicts(t *testing.T, ctx context.Context) (rows [][]string, foreign int) {
	t.Helper()
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[[][]string](
		`[...document.querySelectorAll('[data-testid="conflict"]')].map(tr => [...tr.cells].map(td => td.textContent))`))
	if err != nil {
		t.Fatal(err)
	}
	foreign, err = chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#conflicts :not(tr):not(td):not(span)').length`))
	if err != nil {
		t.Fatal(err)
	}
	return rows, foreign
}

// conflictsAlertShown reports whether the page shows its conflicts alert.
func conflictsAlertShown(t *testing.T, ctx context.Context) bool {
	t.Helper()
	shown, err := chromedp.Run(ctx, chromedp.Evaluate[bool](
		`(e => !e.hidden && getComputedStyle(e).display !== "none" && e.textContent.includes("same id") || false)(document.getElementById("conflicts-alert"))`))
	if err != nil {
		t.Fatal(err)
	}
	return shown
}

// TestUsagePageShowsWhatTheAPISays opens /ui in headless Chromium with a
// read-only tenant key and checks that every number on the page equals
// the API's, under the page's Content-Security-Policy: the page breaks
// none of its rules, and the policy is enforced (an inline script added
// to the page does not run). Its conflicting resends are the API's too,
// counted by resolution, an event id of markup shown as text, and the
// alert shown exactly when the API says the tenant is alerting.
func TestUsagePageShowsWhatTheAPISays(t *testing.T) {
	// The projected bill scales by the time elapsed in the month, so the
	// page and the test's own read must see one instant.
	now := time.Now().UTC()
	e := newUIEnv(t, now)
	_, key := e.createKey(`{"tenant":"acme","scope":"read"}`)
	e.do("PUT", "/v1/admin/plans/free", adminKey, "application/json", `{"currency":"eur","quotas":[
		{"metric":"api_calls","limit":1000,"burst_percent":20,"hard":true,"unit_price":"0.002"},
		{"metric":"tokens","limit":null,"unit_price":"0.0000015"}]}`)
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"free"}`)
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	day := now.Truncate(24 * time.Hour)
	e.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES
		('acme', 'api_calls', 'month', $1, 1250, 1250), ('acme', 'api_calls', 'day', $2, 1250, 1250),
		('acme', 'tokens', 'month', $1, 987654, 3), ('acme', 'tokens', 'day', $2, 987654, 3)`, month, day)
	e.db.Exec(t, `INSERT INTO quota_breaches (breach_id, tenant, metric, period_start, period_end, threshold, quota_limit, value) VALUES
		('b1', 'acme', 'api_calls', $1, $2, 'warning', 1000, 800), ('b2', 'acme', 'api_calls', $1, $2, 'exceeded', 1000, 1000),
		('b3', 'acme', 'api_calls', $1, $2, 'blocked', 1000, 1201)`, month, month.AddDate(0, 1, 0))
	seedConflicts(t, e, now)

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
	conflictRows, foreign := pageConflicts(t, ctx)
	alertShown := conflictsAlertShown(t, ctx)
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

	// Conflicting resends: the API's newest first, as the page shows them.
	var cs struct {
		Alerting  bool
		Conflicts []struct {
			EventID      string `json:"event_id"`
			Metric       string
			Time         time.Time
			Value        int64
			CountedValue int64 `json:"counted_value"`
			Resolution   string
		}
	}
	mustJSON(t, e.do("GET", "/v1/conflicts?tenant=acme&status=all", key, "", "").raw, &cs)
	var wantRows [][]string
	for _, c := range cs.Conflicts {
		wantRows = append(wantRows, []string{c.EventID, c.Metric, c.Time.UTC().Format(time.DateTime), fmt.Sprint(c.Value), fmt.Sprint(c.CountedValue), c.Resolution})
	}
	if fmt.Sprint(conflictRows) != fmt.Sprint(wantRows) || len(wantRows) != 4 {
		t.Errorf("the page lists conflicts\n%q\nthe API says\n%q", conflictRows, wantRows)
	}
	if len(wantRows) == 4 && (wantRows[3][0] != hostileID || wantRows[3][3] != "7" || wantRows[3][4] != "3" || wantRows[3][5] != "raised") {
		t.Errorf("the oldest conflict is %q, want %s raised from 3 to 7", wantRows[3], hostileID)
	}
	if foreign != 0 {
		t.Errorf("the conflicts table holds %d elements of markup from event ids", foreign)
	}
	for r, n := range map[string]string{"raised": "1", "kept": "1", "held": "1", "counted": "0", "dismissed": "1"} {
		if got := shown["conflicts-count-"+r]; got != n {
			t.Errorf("the page counts %q %s conflicts, want %s", got, r, n)
		}
	}
	if cs.Alerting || alertShown {
		t.Errorf("alerting: the API says %v, the page shows the alert: %v; want neither", cs.Alerting, alertShown)
	}

	// Beyond today's threshold, the API says alerting and so does the page.
	e.db.Exec(t, `INSERT INTO conflict_alerts (tenant, day, conflicts, threshold) VALUES ('acme', $1::date, 11, 10)`, now.Format(time.DateOnly))
	if r := e.do("GET", "/v1/conflicts?tenant=acme", key, "", ""); r.body["alerting"] != true {
		t.Fatalf("alerting tenant: %s", r.raw)
	}
	// A new load of the page (the key stayed in the tab's sessionStorage).
	if err := chromedp.Do(ctx,
		chromedp.Navigate(e.srv.URL+"/ui?tenant=acme"),
		chromedp.WaitVisible(`body[data-ready="true"], body[data-error]`),
	); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if errText, err := chromedp.Run(ctx, chromedp.TextContent("#error")); err != nil || errText != "" {
		t.Fatalf("after a reload the page shows an error: %q %v", errText, err)
	}
	if !conflictsAlertShown(t, ctx) {
		t.Error("the API says acme is alerting; the page does not show the alert")
	}
	if rows, foreign := pageConflicts(t, ctx); len(rows) != 4 || foreign != 0 {
		t.Errorf("after a reload the page lists %q (%d foreign elements)", rows, foreign)
	}
	violations, err = chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.cspViolations`))
	if err != nil {
		t.Fatal(err)
	}
	if len(violations) > 0 {
		t.Errorf("the page violates its own Content-Security-Policy: %v", violations)
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

// TestUsagePageCountsConflictsBeyondOneAnswer: with more conflicts than
// one GET /v1/conflicts answer holds, the page counts each resolution on
// its own, says "200 or more" where even that answer is full, and lists
// only the newest.
func TestUsagePageCountsConflictsBeyondOneAnswer(t *testing.T) {
	now := time.Now().UTC()
	e := newUIEnv(t, now)
	_, key := e.createKey(`{"tenant":"acme","scope":"read"}`)
	agg := rollup.New(e.db.Pool, rollup.Config{Group: "g", Topic: topics.UsageEvents, Logger: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return now }})
	at := now.Add(-time.Minute).Truncate(time.Second)
	var recs []rollup.Record
	add := func(id string, value int64, at time.Time) {
		ev := events.Event{ID: id, Tenant: "acme", Metric: "exports", Value: value, Time: at}
		recs = append(recs, rollup.Record{Offset: int64(len(recs)), Key: []byte("acme"), Value: ev.AppendJSON(nil), Time: now})
	}
	for i := range 201 { // 201 kept
		add(fmt.Sprintf("order-%d", i), 5, at)
		add(fmt.Sprintf("order-%d", i), 2, at)
	}
	add("moved", 1, at) // and 1 held
	add("moved", 1, at.Add(-time.Hour))
	res, err := agg.Apply(context.Background(), 0, -1, recs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kept != 201 || res.Held != 1 {
		t.Fatalf("seeding conflicts: %+v", res)
	}

	ctx := openPage(t, e, key)
	shown, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]string](
		`Object.fromEntries([...document.querySelectorAll('[data-testid]')].map(e => [e.dataset.testid, e.textContent.trim()]))`))
	if err != nil {
		t.Fatal(err)
	}
	for r, n := range map[string]string{"raised": "0", "kept": "200 or more", "held": "1", "counted": "0", "dismissed": "0"} {
		if got := shown["conflicts-count-"+r]; got != n {
			t.Errorf("the page counts %q %s conflicts, want %q", got, r, n)
		}
	}
	rows, foreign := pageConflicts(t, ctx)
	if len(rows) != 20 || foreign != 0 || rows[0][0] != "moved" || rows[0][5] != "held" {
		t.Errorf("the page lists %d conflicts, the newest %q (%d foreign elements); want the 20 newest, the held one first", len(rows), rows[:min(1, len(rows))], foreign)
	}
	violations, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.cspViolations`))
	if err != nil {
		t.Fatal(err)
	}
	if len(violations) > 0 {
		t.Errorf("the page violates its own Content-Security-Policy: %v", violations)
	}
}

// TestUsagePageShowsMeters: the page lists each defined meter that counted
// the tenant's usage this month, its five busiest groups with the API's
// values, the rest folded into "other" (a sum for a sum meter, nothing for
// a unique count), and the meter's total, all under the page's CSP.
func TestUsagePageShowsMeters(t *testing.T) {
	now := time.Now().UTC()
	e := newUIEnv(t, now)
	_, key := e.createKey(`{"tenant":"acme","scope":"read"}`)
	e.do("PUT", "/v1/admin/plans/free", adminKey, "application/json", `{"quotas":[{"metric":"tokens","limit":null}]}`)
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"free"}`)
	for name, body := range map[string]string{
		"tokens_by_model": `{"metric":"tokens","aggregation":"sum","group_by":["model"],"description":"tokens per model"}`,
		"token_users":     `{"metric":"tokens","aggregation":"unique_count","group_by":["model"],"property":"user"}`,
	} {
		if r := e.do("PUT", "/v1/admin/meters/"+name, adminKey, "application/json", body); r.status != http.StatusCreated {
			t.Fatalf("PUT meter %s: %d %s", name, r.status, r.body)
		}
	}
	// Seven models, model-i with (i+1) × 100 tokens from user-i; one event
	// without a model.
	agg := rollup.New(e.db.Pool, rollup.Config{Group: "g", Topic: topics.UsageEvents, Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }})
	var recs []rollup.Record
	at := now.Add(-time.Minute)
	for i := range 8 {
		props := map[string]string{"model": fmt.Sprint("model-", i), "user": fmt.Sprint("user-", i)}
		if i == 7 {
			delete(props, "model")
		}
		ev := events.Event{ID: fmt.Sprint("e", i), Tenant: "acme", Metric: "tokens", Value: int64(i+1) * 100, Time: at, Properties: props}
		recs = append(recs, rollup.Record{Offset: int64(i), Key: []byte("acme"), Value: ev.AppendJSON(nil), Time: now})
	}
	if _, err := agg.Apply(context.Background(), 0, -1, recs); err != nil {
		t.Fatal(err)
	}

	ctx := openPage(t, e, key)
	rowsOf := func(testid string) [][]string {
		t.Helper()
		rows, err := chromedp.Run(ctx, chromedp.Evaluate[[][]string](fmt.Sprintf(
			`[...document.querySelectorAll('[data-testid=%q]')].map(tr => [...tr.cells].map(td => td.textContent))`, testid)))
		if err != nil {
			t.Fatal(err)
		}
		return rows
	}
	// The busiest first: the event without a model (800), then model-6 ...
	want := [][]string{{"model=(none)", "800", "1"}, {"model=model-6", "700", "1"}, {"model=model-5", "600", "1"},
		{"model=model-4", "500", "1"}, {"model=model-3", "400", "1"}}
	if got := rowsOf("meter-group-tokens_by_model"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tokens_by_model groups: %v, want %v", got, want)
	}
	if got := rowsOf("meter-other-tokens_by_model"); fmt.Sprint(got) != fmt.Sprint([][]string{{"other (3 groups)", "600", "3"}}) {
		t.Errorf("tokens_by_model other: %v", got)
	}
	if got := rowsOf("meter-other-token_users"); fmt.Sprint(got) != fmt.Sprint([][]string{{"other (3 groups)", "—", "3"}}) {
		t.Errorf("token_users other: %v", got)
	}
	total, err := chromedp.Run(ctx, chromedp.TextContent(`[data-testid="meter-total-tokens_by_model"]`))
	if err != nil || total != "3600" {
		t.Errorf("tokens_by_model total %q (%v), want 3600", total, err)
	}
	if v, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.cspViolations`)); err != nil || len(v) > 0 {
		t.Errorf("CSP violations: %v (%v)", v, err)
	}
}

// openPage opens acme's usage page with key in headless Chromium, with
// CSP violations recorded, and fails unless it loads without an error.
func openPage(t *testing.T, e *env, key string) context.Context {
	t.Helper()
	ctx := browser(t)
	if err := chromedp.Do(ctx,
		recordCSPViolations(),
		chromedp.Navigate(e.srv.URL+"/ui?tenant=acme#key="+key),
		chromedp.WaitVisible(`body[data-ready="true"], body[data-error]`),
	); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if errText, err := chromedp.Run(ctx, chromedp.TextContent("#error")); err != nil || errText != "" {
		t.Fatalf("the page shows an error: %q %v", errText, err)
	}
	return ctx
}

// TestUsagePageShowsBillGroups: a priced quota billed per group shows a
// bill line per group with the API's figures, each group on its own
// volume tiers, the group's values (markup among them) as text and the
// tiers as the price, beside the implicit meter's per_unit line.
func TestUsagePageShowsBillGroups(t *testing.T) {
	now := time.Now().UTC()
	e := newUIEnv(t, now)
	_, key := e.createKey(`{"tenant":"acme","scope":"read"}`)
	if r := e.do("PUT", "/v1/admin/meters/tokens_by_model", adminKey, "application/json", `{"metric":"tokens","aggregation":"sum","group_by":["model"]}`); r.status != http.StatusCreated {
		t.Fatalf("PUT meter: %d %s", r.status, r.raw)
	}
	if r := e.do("PUT", "/v1/admin/plans/free", adminKey, "application/json", `{"quotas":[
		{"metric":"tokens","limit":null,"unit_price":"0.001"},
		{"metric":"tokens","meter":"tokens_by_model","limit":null,"per_group":true,
		 "price":{"model":"volume","tiers":[{"up_to":1000,"unit_amount":"0.002"},{"up_to":null,"unit_amount":"0.001","flat_amount":"1"}]}}]}`); r.status != http.StatusOK {
		t.Fatalf("PUT plan: %d %s", r.status, r.raw)
	}
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"free"}`)
	agg := rollup.New(e.db.Pool, rollup.Config{Group: "g", Topic: topics.UsageEvents, Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }})
	var recs []rollup.Record
	for i, model := range []string{"gpt-4", hostileID, ""} {
		props := map[string]string{"model": model}
		if model == "" {
			props = nil
		}
		ev := events.Event{ID: fmt.Sprint("e", i), Tenant: "acme", Metric: "tokens", Value: int64(i+1) * 1000, Time: now.Add(-time.Minute), Properties: props}
		recs = append(recs, rollup.Record{Offset: int64(i), Key: []byte("acme"), Value: ev.AppendJSON(nil), Time: now})
	}
	if _, err := agg.Apply(context.Background(), 0, -1, recs); err != nil {
		t.Fatal(err)
	}

	ctx := openPage(t, e, key)
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[[][]string](
		`[...document.querySelectorAll('[data-testid="bill-line"]')].map(tr => [...tr.cells].map(td => td.textContent))`))
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#bill :not(tr):not(td)').length`))
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		Lines []struct {
			Metric, Meter string
			Group         map[string]*string
			UnitPrice     string `json:"unit_price"`
			Amount        string
			Used          int64
			ProjUsed      int64  `json:"projected_used"`
			ProjAmount    string `json:"projected_amount"`
		}
	}
	mustJSON(t, e.do("GET", "/v1/bill/acme", key, "", "").raw, &b)
	var want [][]string
	for _, l := range b.Lines {
		label, group := l.Metric, "all"
		if l.Meter != l.Metric {
			label += " · " + l.Meter
			if v := l.Group["model"]; v == nil {
				group = "model=(none)"
			} else {
				group = "model=" + *v
			}
		}
		price := l.UnitPrice
		if price == "" {
			price = "volume: ≤ 1000 at 0.002; rest at 0.001 + 1"
		}
		want = append(want, []string{label, group, price, fmt.Sprint(l.Used), l.Amount, fmt.Sprint(l.ProjUsed), l.ProjAmount})
	}
	// Each group on its own tiers: 3000 and 2000 in the second, with its
	// fee; 1000 in the first.
	if len(want) != 4 || want[0][0] != "tokens" || want[0][3] != "6000" || want[1][1] != "model=(none)" || want[1][4] != "4.00" ||
		want[2][1] != "model="+hostileID || want[2][4] != "3.00" || want[3][4] != "2.00" {
		t.Errorf("the API's bill lines: %q", want)
	}
	if fmt.Sprint(rows) != fmt.Sprint(want) {
		t.Errorf("the page shows bill lines\n%q\nthe API says\n%q", rows, want)
	}
	if foreign != 0 {
		t.Errorf("the bill holds %d elements of markup from group values", foreign)
	}
	if v, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.cspViolations`)); err != nil || len(v) > 0 {
		t.Errorf("CSP violations: %v (%v)", v, err)
	}
}

// TestUsagePageFoldsBillGroupsPastTheTop: a quota billed per group with
// more groups than the page lists shows the ones of greatest projected
// amount, then one line with the others' amounts added exactly.
func TestUsagePageFoldsBillGroupsPastTheTop(t *testing.T) {
	now := time.Now().UTC()
	e := newUIEnv(t, now)
	_, key := e.createKey(`{"tenant":"acme","scope":"read"}`)
	if r := e.do("PUT", "/v1/admin/meters/tokens_by_model", adminKey, "application/json", `{"metric":"tokens","aggregation":"sum","group_by":["model"]}`); r.status != http.StatusCreated {
		t.Fatalf("PUT meter: %d %s", r.status, r.raw)
	}
	if r := e.do("PUT", "/v1/admin/plans/free", adminKey, "application/json", `{"quotas":[
		{"metric":"tokens","meter":"tokens_by_model","limit":null,"per_group":true,"unit_price":"0.001"}]}`); r.status != http.StatusOK {
		t.Fatalf("PUT plan: %d %s", r.status, r.raw)
	}
	e.do("PUT", "/v1/admin/tenants/acme", adminKey, "application/json", `{"plan":"free"}`)
	agg := rollup.New(e.db.Pool, rollup.Config{Group: "g", Topic: topics.UsageEvents, Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }})
	var recs []rollup.Record
	// 13 groups: m01 used 1,010 tokens (1.01), ..., m13 13,130 (13.13).
	for i := 1; i <= 13; i++ {
		ev := events.Event{ID: fmt.Sprint("e", i), Tenant: "acme", Metric: "tokens", Value: int64(i) * 1010, Time: now.Add(-time.Minute),
			Properties: map[string]string{"model": fmt.Sprintf("m%02d", i)}}
		recs = append(recs, rollup.Record{Offset: int64(i), Key: []byte("acme"), Value: ev.AppendJSON(nil), Time: now})
	}
	if _, err := agg.Apply(context.Background(), 0, -1, recs); err != nil {
		t.Fatal(err)
	}
	var b struct {
		Lines []struct {
			Group           map[string]string
			ProjectedAmount string `json:"projected_amount"`
			Amount          string
		}
	}
	mustJSON(t, e.do("GET", "/v1/bill/acme", key, "", "").raw, &b)
	if len(b.Lines) != 13 {
		t.Fatalf("the API bills %d lines, want 13", len(b.Lines))
	}
	// The three smallest groups fold: 1.01 + 2.02 + 3.03 now, and their
	// projections added.
	var otherProjected int64
	for _, l := range b.Lines {
		if m := l.Group["model"]; m == "m01" || m == "m02" || m == "m03" {
			var whole, frac int64
			fmt.Sscanf(l.ProjectedAmount, "%d.%d", &whole, &frac)
			otherProjected += whole*100 + frac
		}
	}
	ctx := openPage(t, e, key)
	groups, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`[...document.querySelectorAll('[data-testid="bill-line"]')].map(tr => tr.cells[1].textContent)`))
	if err != nil {
		t.Fatal(err)
	}
	other, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`[...document.querySelectorAll('[data-testid="bill-other"] td')].map(td => td.textContent)`))
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 10 || groups[0] != "model=m04" || groups[9] != "model=m13" {
		t.Errorf("the page lists groups %q, want m04 to m13", groups)
	}
	want := fmt.Sprintf("%d.%02d", otherProjected/100, otherProjected%100)
	if len(other) != 7 || other[1] != "other (3 groups)" || other[4] != "6.06" || other[6] != want {
		t.Errorf("the other line: %q, want 3 groups, 6.06 now, %s projected", other, want)
	}
}
