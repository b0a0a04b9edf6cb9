package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/anomaly"
	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/periodclose"
	"github.com/usagemeter/metering/internal/ratelimit"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/relay"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/anomalydata"
	"github.com/usagemeter/metering/internal/storage/deadletters"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/storage/webhooks"
	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

const adminKey = "mk_console_test_admin_key_0123456789"

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

// capture is a relay.Writer that keeps what it is given: usage.events as
// the replayed records reach it.
type capture struct {
	mu   sync.Mutex
	recs []record.Record
}

func (c *capture) Write(_ context.Context, recs ...record.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs = append(c.recs, recs...)
	return nil
}

func (c *capture) take(topic string) []record.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out, rest []record.Record
	for _, r := range c.recs {
		if r.Topic == topic {
			out = append(out, r)
		} else {
			rest = append(rest, r)
		}
	}
	c.recs = rest
	return out
}

// stack is ingest (serving the console) and the biller's keyed routes on
// one database, with the Stripe test server behind the biller.
type stack struct {
	t       *testing.T
	db      *pgtest.DB
	ingest  *httptest.Server
	biller  *httptest.Server
	fake    *stripefake.Server
	billing *stripesync.Biller
	agg     *rollup.Aggregator
	out     *capture
	now     time.Time
	next    int64 // the partition's next offset
}

func newStack(t *testing.T) *stack {
	t.Helper()
	db := pgtest.New(t)
	log := slog.New(slog.DiscardHandler)
	now := time.Now().UTC()
	fake := stripefake.New(stripefake.Config{})
	fakeSrv := httptest.NewServer(fake)
	t.Cleanup(func() { fake.Close(); fakeSrv.Close() })
	fake.EnsureMeter("api_calls")

	st := accounts.New(db.Pool)
	b := stripesync.New(db.Pool, stripeapi.NewClient("sk_test_console", fakeSrv.URL, 2*time.Second), stripesync.Config{
		RatePerSecond: 1000, BackoffMin: time.Millisecond, BackoffMax: 10 * time.Millisecond, MaxAttempts: 2, Logger: log,
	})
	closer := periodclose.New(db.Pool, periodclose.Config{Group: "g", Topic: topics.UsageEvents, Logger: log,
		Partitions: func(context.Context) ([]int, error) { return []int{0}, nil }})
	mux := http.NewServeMux()
	biller.MountAPI(mux, auth.New(st, adminKey), b, closer, log)
	billerSrv := httptest.NewServer(httpguard.SecurityHeaders(mux))
	t.Cleanup(billerSrv.Close)
	billerURL, _ := url.Parse(billerSrv.URL)

	out := &capture{}
	api := ingest.New(ingest.Options{
		Store: st, Auth: auth.New(st, adminKey), Usage: usagedata.NewReader(db.Pool), Conflicts: usagedata.NewConflictReader(db.Pool), DB: db.Pool,
		KeyLimiter: ratelimit.New(1e6, 1e6), IPLimiter: ratelimit.New(1e6, 1e6), MaxBodyBytes: 1 << 20,
		Logger: log, Registry: prometheus.NewRegistry(),
		DeadLetters: rollup.NewDeadLetters(db.Pool), Outbox: relay.New(db.Pool, out, log, nil), BillerURL: billerURL,
	})
	ingestSrv := httptest.NewServer(api.Handler(http.NewServeMux()))
	t.Cleanup(ingestSrv.Close)
	agg := rollup.New(db.Pool, rollup.Config{Group: "g", Topic: topics.UsageEvents, Logger: log})
	return &stack{t: t, db: db, ingest: ingestSrv, biller: billerSrv, fake: fake, billing: b, agg: agg, out: out, now: now}
}

// call sends a request to ingest and decodes a JSON answer into v (when
// not nil); it returns the status.
func (s *stack) call(method, path, key, body string, v any) int {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, s.ingest.URL+path, rd)
	req.Header.Set("Authorization", "Bearer "+key)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(raw, v); err != nil {
			s.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

func (s *stack) mustCall(method, path, key, body string, want int) {
	s.t.Helper()
	var v any
	if got := s.call(method, path, key, body, &v); got != want {
		s.t.Fatalf("%s %s: %d %v, want %d", method, path, got, v, want)
	}
}

// count applies events to the windows as the aggregator would.
func (s *stack) count(recs ...record.Record) {
	s.t.Helper()
	for i := range recs {
		recs[i].Partition, recs[i].Offset = 0, s.next+int64(i)
	}
	res, err := s.agg.Apply(context.Background(), 0, s.next, recs)
	if err != nil {
		s.t.Fatal(err)
	}
	s.next = res.NextOffset
}

func (s *stack) event(tenant, id string, value int64) record.Record {
	ev := events.Event{ID: id, Tenant: tenant, Metric: "api_calls", Value: value, Time: s.now.Add(-time.Minute).Truncate(time.Second)}
	return record.Record{Key: []byte(tenant), Value: ev.AppendJSON(nil), Time: s.now}
}

// monthUsage is tenant's api_calls this month, as GET /v1/usage says.
func (s *stack) monthUsage(tenant string) int64 {
	s.t.Helper()
	var u struct{ Total int64 }
	from := windows.Month.Start(s.now).Format(time.RFC3339)
	s.mustCallInto("GET", "/v1/usage?tenant="+tenant+"&metric=api_calls&window=month&from="+url.QueryEscape(from), &u)
	return u.Total
}

func (s *stack) mustCallInto(method, path string, v any) {
	s.t.Helper()
	if got := s.call(method, path, adminKey, "", v); got != http.StatusOK {
		s.t.Fatalf("%s %s: %d", method, path, got)
	}
}

// stripeEvents counts the meter events Stripe accepted for customer.
func (s *stack) stripeEvents(customer string) (n int, total int64) {
	for _, e := range s.fake.Events() {
		if e.Customer == customer && !e.Cancelled {
			n++
			total += e.Value
		}
	}
	return n, total
}

// ui drives headless Chromium on the console.
type ui struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

func newUI(t *testing.T) *ui {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium(t)), chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true),
		chromedp.WindowSize(1280, 900), chromedp.UserDataDir(t.TempDir()))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancel = context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(cancel)
	return &ui{t: t, ctx: ctx, shots: os.Getenv("CONSOLE_SCREENSHOTS")}
}

func (u *ui) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	u.t.Helper()
	if err := chromedp.Do(u.ctx, steps...); err != nil {
		u.t.Fatalf("%s: %v (the page's error: %q)", what, err, u.text("#error"))
	}
}

func (u *ui) text(sel string) string {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(u.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(e => e ? e.textContent : "")(document.querySelector(%q))`, sel)))
	if err != nil {
		u.t.Fatalf("reading %s: %v", sel, err)
	}
	return s
}

func (u *ui) eval(expr string) int {
	u.t.Helper()
	n, err := chromedp.Run(u.ctx, chromedp.Evaluate[int](expr))
	if err != nil {
		u.t.Fatalf("%s: %v", expr, err)
	}
	return n
}

// open goes to a page of the console and waits until it has loaded.
func (u *ui) open(page string) {
	u.t.Helper()
	u.do("opening "+page, chromedp.Click("#nav-"+page), chromedp.WaitVisible(`#view[data-ready="`+page+`"]`))
	if e := u.text("#error"); e != "" {
		u.t.Fatalf("page %s shows an error: %s", page, e)
	}
}

func (u *ui) click(testid string) {
	u.t.Helper()
	u.do("clicking "+testid, chromedp.Click(`[data-testid="`+testid+`"]`))
}

// waitText waits until the element sel holds want.
func (u *ui) waitText(sel, want string) {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(u.ctx, 20*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(`(e => !!e && e.textContent.includes(%q))(document.querySelector(%q))`, want, sel))); err != nil {
		u.t.Fatalf("waiting for %q in %s: %v; it holds %q; the page's error: %q", want, sel, err, u.text(sel), u.text("#error"))
	}
}

// act replays or discards through the confirmation: the button stays
// disabled until a note is typed.
func (u *ui) act(testid, note string) {
	u.t.Helper()
	u.click(testid)
	u.do("opening the confirmation", chromedp.WaitVisible("#confirm-note"))
	if u.eval(`document.getElementById("confirm-ok").disabled ? 1 : 0`) != 1 {
		u.t.Fatal("the confirmation can be confirmed without a note")
	}
	u.do("confirming "+testid, chromedp.SendKeys("#confirm-note", note), chromedp.Click("#confirm-ok"), chromedp.WaitNotVisible("#confirm-note"))
}

// selectOption picks value in the select sel, as a user would: nothing
// changes (and nothing reloads) when it is already picked.
func (u *ui) selectOption(sel, value string) {
	u.t.Helper()
	if _, err := chromedp.Run(u.ctx, chromedp.Evaluate[bool](fmt.Sprintf(
		`(e => { if (e.value === %[1]q) return true; e.value = %[1]q; return e.dispatchEvent(new Event("change")); })(document.querySelector(%[2]q))`, value, sel))); err != nil {
		u.t.Fatalf("selecting %s in %s: %v", value, sel, err)
	}
}

func (u *ui) shot(name string) {
	u.t.Helper()
	if u.shots == "" {
		return
	}
	png, err := chromedp.Run(u.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		u.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(u.shots, name+".png"), png, 0o644); err != nil {
		u.t.Fatal(err)
	}
}

func (u *ui) signIn(base, key string) {
	u.t.Helper()
	u.do("signing in", chromedp.Navigate(base+"/console"), chromedp.WaitVisible("#key"),
		chromedp.SendKeys("#key", key), chromedp.Click("#signin"))
}

func (u *ui) noCSPViolations() {
	u.t.Helper()
	v, err := chromedp.Run(u.ctx, chromedp.Evaluate[[]string](`window.cspViolations || []`))
	if err != nil {
		u.t.Fatal(err)
	}
	if len(v) > 0 {
		u.t.Errorf("the console violates its Content-Security-Policy: %v", v)
	}
}

// TestConsole clicks through every page and action of the console in
// headless Chromium, as an admin and as a viewer, and checks each action's
// effect through the API, Postgres and the Stripe test server.
// CONSOLE_SCREENSHOTS=dir saves a screenshot of each page there.
func TestConsole(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()

	// Tenants on a plan with a quota acme exceeds; initech's and globex's
	// pushes are refused by Stripe.
	s.mustCall("PUT", "/v1/admin/plans/pro", adminKey, `{"currency":"usd","quotas":[{"metric":"api_calls","limit":5,"stripe_event_name":"api_calls","unit_price":"0.01"}]}`, 200)
	s.mustCall("PUT", "/v1/admin/plans/pro", adminKey, `{"currency":"usd","quotas":[{"metric":"api_calls","limit":8,"stripe_event_name":"api_calls","unit_price":"0.01"}]}`, 200)
	for _, tn := range []string{"acme", "globex", "initech"} {
		s.mustCall("PUT", "/v1/admin/tenants/"+tn, adminKey, `{"plan":"pro","stripe_customer_id":"cus_`+tn+`"}`, 200)
	}
	var viewer, tenantKey struct{ ID, Key string }
	if s.call("POST", "/v1/admin/keys", adminKey, `{"role":"viewer"}`, &viewer) != http.StatusCreated {
		t.Fatal("creating a viewer key")
	}
	if s.call("POST", "/v1/admin/keys", adminKey, `{"tenant":"acme","scope":"read"}`, &tenantKey) != http.StatusCreated {
		t.Fatal("creating a tenant key")
	}
	s.count(s.event("acme", "a-1", 2), s.event("acme", "a-2", 3), s.event("acme", `<b id="x">a-3</b>`, 5),
		s.event("globex", "g-1", 7), s.event("initech", "i-1", 11))
	s.fake.SetReject(func(_, customer string) bool { return customer != "cus_acme" })
	if res, err := s.billing.Sync(ctx); err != nil || res.Sent != 1 || res.Dead != 2 {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	// Two usage dead letters: an event whose cause is fixed (replayed)
	// and a record that is no event (discarded).
	late := s.event("acme", "late-1", 4)
	if err := deadletters.RecordUsage(ctx, s.db.Pool, topics.UsageEvents, &deadletters.UsageLetters{
		Tenants: []string{"acme", ""}, Errors: []string{"unknown tenant at the time", "not JSON"}, Classes: []string{"invalid_event", "undecodable"},
		Partitions: []int32{0, 0}, Offsets: []int64{100, 101}, Keys: [][]byte{[]byte("acme"), []byte("junk")},
		Payloads: [][]byte{late.Value, []byte(`<script>alert(1)</script>`)}, Headers: [][]record.Header{nil, nil},
	}, s.now); err != nil {
		t.Fatal(err)
	}
	var dl struct {
		DeadLetters []rollup.DeadLetter `json:"dead_letters"`
	}
	s.mustCallInto("GET", "/v1/admin/dlq/usage", &dl)
	if len(dl.DeadLetters) != 2 {
		t.Fatalf("usage DLQ: %+v", dl)
	}
	replayID, discardID := dl.DeadLetters[0].ID, dl.DeadLetters[1].ID
	var bd struct {
		DeadLetters []stripesync.DeadPush `json:"dead_letters"`
	}
	s.mustCallInto("GET", "/v1/admin/dlq/billing", &bd)
	if len(bd.DeadLetters) != 2 {
		t.Fatalf("billing DLQ through ingest: %+v", bd)
	}
	deadPush := map[string]int64{}
	for _, d := range bd.DeadLetters {
		deadPush[d.Tenant] = d.ID
	}

	u := newUI(t)
	dir := t.TempDir()
	u.do("setting up the browser", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: `
			window.cspViolations = [];
			document.addEventListener("securitypolicyviolation", e => window.cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline")));`})
		return err
	}), chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
			Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: dir})
		return err
	}))

	// A tenant key is told plainly it cannot use the console.
	u.signIn(s.ingest.URL, tenantKey.Key)
	u.waitText("#error", "the console needs an admin or viewer key")
	u.shot("00-tenant-key")
	if u.eval(`getComputedStyle(document.getElementById("nav")).display === "none" ? 1 : 0`) != 1 {
		t.Error("a tenant key sees the console's pages")
	}

	// Admin: tenants with plan history, plans with versions.
	u.signIn(s.ingest.URL, adminKey)
	u.do("the tenants page", chromedp.WaitVisible(`#view[data-ready="tenants"]`))
	u.waitText("#who", "an admin key")
	for _, tn := range []string{"acme", "globex", "initech", "cus_globex"} {
		u.waitText("#tenants", tn)
	}
	u.click("history-acme")
	u.waitText("#tenant-plans", "pro")
	u.shot("01-tenants")
	u.open("plans")
	u.waitText("#plans", "api_calls: 8/month")
	u.click("versions-pro")
	u.waitText("#plan-versions", "api_calls: 5/month")
	if n := u.eval(`document.querySelectorAll("#plan-versions tbody tr").length`); n != 2 {
		t.Errorf("plan pro shows %d versions, want 2", n)
	}
	u.shot("02-plans")

	// Reconciliation, its CSV, and the drill-down to a push's events.
	u.open("reconciliation")
	u.waitText("#recon", "acme")
	u.waitText("#recon", "globex")
	u.click("pushes-acme-api_calls")
	u.waitText("#pushes", "sent")
	ident := u.text("#pushes tbody tr td")
	u.click("lineage-" + ident)
	u.waitText("#push-events", "a-2")
	u.waitText("#push-events", `<b id="x">a-3</b>`)
	if n := u.eval(`document.querySelectorAll("#push-events tbody tr").length`); n != 3 {
		t.Errorf("the push shows %d events, want 3", n)
	}
	if n := u.eval(`document.querySelectorAll("#push-events b, #x").length`); n != 0 {
		t.Error("an event id was rendered as markup")
	}
	u.waitText("#push-windows", "month")
	u.shot("03-reconciliation")
	u.do("downloading the CSV", chromedp.Click("#recon-csv"))
	csvName := "reconciliation-" + s.now.Format("2006-01") + ".csv"
	var csv []byte
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if b, err := os.ReadFile(filepath.Join(dir, csvName)); err == nil && len(b) > 0 {
			csv = b
			break
		}
	}
	if !strings.Contains(string(csv), `"acme"`) || !strings.HasPrefix(string(csv), `"tenant"`) {
		entries, _ := os.ReadDir(dir)
		t.Fatalf("the CSV %s was not downloaded whole: %q (download dir: %v)", csvName, csv, entries)
	}

	// Usage DLQ: show, replay (counted once), discard.
	u.open("dlq-usage")
	u.click(fmt.Sprint("show-usage-", replayID))
	u.waitText("#dlq-usage-payload", `"id":"late-1"`)
	u.click(fmt.Sprint("show-usage-", discardID))
	u.waitText("#dlq-usage-payload", `<script>alert(1)</script>`)
	u.shot("04-usage-dlq")
	before := s.monthUsage("acme")
	u.act(fmt.Sprint("replay-usage-", replayID), "tenant fixed; count it (OPS-1)")
	u.waitText("#notice", "replayed")
	replayed := s.out.take(topics.UsageEvents)
	if len(replayed) != 1 || string(replayed[0].Value) != string(late.Value) {
		t.Fatalf("the replay published %d records to usage.events: %+v", len(replayed), replayed)
	}
	// The aggregator counts it once, even when the replay is read twice.
	s.count(replayed[0], replayed[0])
	if got := s.monthUsage("acme"); got != before+4 {
		t.Errorf("acme's usage after the replay is %d, want %d", got, before+4)
	}
	u.act(fmt.Sprint("discard-usage-", discardID), "garbage from a test producer")
	u.waitText("#notice", "discarded")
	u.selectOption("#dlq-usage-status", "all")
	u.waitText("#dlq-usage", "replayed")
	u.waitText("#dlq-usage", "discarded")
	if n := u.eval(`document.querySelectorAll('[data-testid^="replay-usage-"], [data-testid^="discard-usage-"]').length`); n != 0 {
		t.Errorf("%d actions offered on resolved dead letters", n)
	}
	u.shot("05-usage-dlq-resolved")

	// Billing DLQ: replay globex's push (sent once), discard initech's.
	u.open("dlq-billing")
	u.click(fmt.Sprint("show-billing-", deadPush["globex"]))
	u.waitText("#dlq-billing-push", "cus_globex")
	u.shot("06-billing-dlq")
	s.fake.SetReject(func(_, customer string) bool { return customer == "cus_initech" })
	u.act(fmt.Sprint("replay-billing-", deadPush["globex"]), "Stripe customer fixed")
	u.waitText("#notice", "sent")
	if u.text("#dlq-billing-detail") != "" {
		t.Error("the shown push stays on the page after its replay, with its old status")
	}
	if n, total := s.stripeEvents("cus_globex"); n != 1 || total != 7 {
		t.Errorf("Stripe holds %d events (total %d) of globex, want 1 of 7", n, total)
	}
	u.act(fmt.Sprint("discard-billing-", deadPush["initech"]), "customer left; written off")
	u.waitText("#notice", "discarded")
	u.waitText("#dlq-billing-empty", "empty")
	if n, _ := s.stripeEvents("cus_initech"); n != 0 {
		t.Errorf("a discarded push reached Stripe %d times", n)
	}
	u.shot("07-billing-dlq-resolved")

	// Every action is audited with the key and the note.
	type audit struct{ Action, Actor, Note string }
	rows, err := s.db.Pool.Query(ctx, `SELECT action, actor, note FROM audit_log WHERE action LIKE 'dlq.%' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var audits []audit
	for rows.Next() {
		var a audit
		if err := rows.Scan(&a.Action, &a.Actor, &a.Note); err != nil {
			t.Fatal(err)
		}
		audits = append(audits, a)
	}
	want := []audit{
		{"dlq.usage.replay", "key:bootstrap", "tenant fixed; count it (OPS-1)"},
		{"dlq.usage.discard", "key:bootstrap", "garbage from a test producer"},
		{"dlq.billing.replay", "key:bootstrap", "Stripe customer fixed"},
		{"dlq.billing.discard", "key:bootstrap", "customer left; written off"},
	}
	if fmt.Sprint(audits) != fmt.Sprint(want) {
		t.Errorf("audit_log holds %v, want %v", audits, want)
	}

	// Breaches and the audit log.
	u.open("breaches")
	u.waitText("#breaches", "exceeded")
	u.shot("08-breaches")
	// An audited admin change, for the audit page: made after the
	// reconciliation, whose months are acme's billing periods until then.
	s.mustCall("PUT", "/v1/admin/tenants/acme/billing-cycle", adminKey,
		`{"anchor":"`+windows.Month.Start(s.now).AddDate(0, 0, -20).Format(time.RFC3339)+`","interval":"month"}`, 200)
	u.open("audit")
	u.waitText("#audit", "billing_cycle.put")
	u.waitText("#audit", "customer left; written off") // a discard's note
	u.waitText("#audit", "bootstrap")
	u.shot("09-audit")
	u.do("filtering the audit log", chromedp.SendKeys("#audit-action", "no.such.action"), chromedp.Click("#audit-filter"))
	u.waitText("#audit-empty", "No entries match")
	u.noCSPViolations()
	// The control: an inline script, which the policy must block.
	if u.eval(`(() => { const s = document.createElement("script"); s.textContent = "window.inlineRan = 1";
		document.body.appendChild(s); return window.inlineRan === 1 ? 1 : 0; })()`) != 0 {
		t.Error("an inline script ran in the console: its Content-Security-Policy allows inline script")
	}
	if u.eval(`sessionStorage.getItem("consoleKey") === `+fmt.Sprintf("%q", adminKey)+` && !location.href.includes("mk_") ? 1 : 0`) != 1 {
		t.Error("the key is not kept in sessionStorage, or shows in the URL")
	}
	resp, err := http.Get(s.ingest.URL + "/console")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if missing := httpguard.Missing(resp.Header); len(missing) > 0 {
		t.Errorf("/console lacks %v", missing)
	}

	// Viewer: every page, no action offered, actions refused.
	u.do("signing out", chromedp.Click("#logout"), chromedp.WaitVisible("#key"))
	u.signIn(s.ingest.URL, viewer.Key)
	u.do("the tenants page as a viewer", chromedp.WaitVisible(`#view[data-ready="tenants"]`))
	u.waitText("#who", "a viewer key (read-only)")
	u.waitText("#tenants", "acme")
	for _, p := range []string{"plans", "reconciliation", "dlq-usage", "dlq-billing", "holds", "breaches", "audit"} {
		u.open(p)
	}
	u.open("dlq-usage")
	u.selectOption("#dlq-usage-status", "all")
	u.waitText("#dlq-usage", "replayed")
	u.click(fmt.Sprint("show-usage-", replayID))
	u.waitText("#dlq-usage-payload", "late-1")
	if n := u.eval(`document.querySelectorAll('[data-testid^="replay-"], [data-testid^="discard-"]').length`); n != 0 {
		t.Errorf("a viewer is offered %d actions", n)
	}
	u.shot("10-viewer-usage-dlq")
	u.noCSPViolations()
	for _, path := range []string{
		fmt.Sprint("/v1/admin/dlq/usage/", replayID, "/replay"), fmt.Sprint("/v1/admin/dlq/usage/", discardID, "/discard"),
		fmt.Sprint("/v1/admin/dlq/billing/", deadPush["globex"], "/replay"), fmt.Sprint("/v1/admin/dlq/billing/", deadPush["initech"], "/discard"),
	} {
		if got := s.call("POST", path, viewer.Key, `{"note":"a viewer tries"}`, nil); got != http.StatusForbidden {
			t.Errorf("a viewer's POST %s: %d, want 403", path, got)
		}
	}
}

// TestConsoleHolds clicks through the held pushes page in headless
// Chromium: two spikes on a plan with hold_on_anomaly are held and listed
// (and shown held in the reconciliation); a viewer is offered no action
// and refused by the server; an admin approves one (sent to Stripe once)
// and rejects the other (never sent), each with a required note that the
// audit log keeps.
func TestConsoleHolds(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	s.mustCall("PUT", "/v1/admin/plans/guarded", adminKey, `{"currency":"usd","hold_on_anomaly":{"factor":"10"},
		"quotas":[{"metric":"api_calls","limit":null,"stripe_event_name":"api_calls","unit_price":"0.01"}]}`, 200)
	for _, tn := range []string{"acme", "globex"} {
		s.mustCall("PUT", "/v1/admin/tenants/"+tn, adminKey, `{"plan":"guarded","stripe_customer_id":"cus_`+tn+`"}`, 200)
	}
	var viewer struct{ ID, Key string }
	if s.call("POST", "/v1/admin/keys", adminKey, `{"role":"viewer"}`, &viewer) != http.StatusCreated {
		t.Fatal("creating a viewer key")
	}
	// A first push of 10 each sets the baseline; a delta of 990, beyond
	// ten times it, is held.
	s.count(s.event("acme", "a-1", 10), s.event("globex", "g-1", 10))
	if res, err := s.billing.Sync(ctx); err != nil || res.Sent != 2 {
		t.Fatalf("first sync: %+v, %v", res, err)
	}
	s.count(s.event("acme", "a-2", 990), s.event("globex", "g-2", 990))
	if res, err := s.billing.Sync(ctx); err != nil || res.Held != 2 || res.Sent != 0 {
		t.Fatalf("spike sync: %+v, %v", res, err)
	}
	var list struct {
		Holds []struct {
			ID     int64
			Tenant string
		}
	}
	s.mustCallInto("GET", "/v1/admin/holds", &list)
	held := map[string]int64{}
	for _, h := range list.Holds {
		held[h.Tenant] = h.ID
	}
	if len(list.Holds) != 2 || held["acme"] == 0 || held["globex"] == 0 {
		t.Fatalf("holds through ingest: %+v", list)
	}
	u := newUI(t)

	// Viewer: the holds are listed, no action is offered, and the server
	// refuses one.
	u.signIn(s.ingest.URL, viewer.Key)
	u.do("the tenants page as a viewer", chromedp.WaitVisible(`#view[data-ready="tenants"]`))
	u.open("holds")
	u.waitText("#holds", "acme")
	u.waitText("#holds", "globex")
	if n := u.eval(`document.querySelectorAll('#holds button').length`); n != 0 {
		t.Errorf("a viewer is offered %d actions on held pushes", n)
	}
	u.shot("20-viewer-holds")
	for tn, id := range held {
		for _, action := range []string{"approve", "reject"} {
			if got := s.call("POST", fmt.Sprint("/v1/admin/holds/", id, "/", action), viewer.Key, `{"note":"a viewer tries"}`, nil); got != http.StatusForbidden {
				t.Errorf("a viewer's %s of %s's hold: %d, want 403", action, tn, got)
			}
		}
	}
	u.do("signing out", chromedp.Click("#logout"), chromedp.WaitVisible("#key"))

	// Admin: the reconciliation shows them held; approve acme's, reject
	// globex's.
	u.signIn(s.ingest.URL, adminKey)
	u.do("the tenants page", chromedp.WaitVisible(`#view[data-ready="tenants"]`))
	u.open("reconciliation")
	u.waitText("#recon", "held")
	if n := u.eval(`[...document.querySelectorAll("#recon span[title]")].filter(e => e.title.includes("held for approval")).length`); n != 2 {
		t.Errorf("%d held reconciliation rows say why on their status, want 2", n)
	}
	u.shot("21-reconciliation-held")
	u.open("holds")
	u.waitText("#holds", "delta 990 is more than 10")
	if n := u.eval(`document.querySelectorAll('#holds tbody tr').length`); n != 2 {
		t.Errorf("the page lists %d held pushes, want 2", n)
	}
	u.shot("22-holds")
	u.click(fmt.Sprint("approve-hold-", held["acme"]))
	u.do("opening the confirmation", chromedp.WaitVisible("#confirm-note"))
	u.waitText("#confirm-text", "acme")
	u.shot("23-hold-confirm")
	u.do("cancelling", chromedp.Click("#confirm-cancel"), chromedp.WaitNotVisible("#confirm-note"))
	if n, _ := s.stripeEvents("cus_acme"); n != 1 {
		t.Fatalf("a cancelled approval reached Stripe: %d events of acme", n)
	}
	u.act(fmt.Sprint("approve-hold-", held["acme"]), "launch week; expected growth")
	u.waitText("#notice", "sent")
	if n, total := s.stripeEvents("cus_acme"); n != 2 || total != 1000 {
		t.Errorf("Stripe holds %d events (total %d) of acme, want 2 of 1000", n, total)
	}
	u.act(fmt.Sprint("reject-hold-", held["globex"]), "load test against production")
	u.waitText("#notice", "discarded")
	u.waitText("#holds-empty", "No pushes are held")
	if n, total := s.stripeEvents("cus_globex"); n != 1 || total != 10 {
		t.Errorf("Stripe holds %d events (total %d) of globex, want the first push only (1 of 10)", n, total)
	}
	u.shot("24-holds-decided")
	u.noCSPViolations()

	type audit struct{ Action, Actor, Note string }
	rows, err := s.db.Pool.Query(ctx, `SELECT action, actor, note FROM audit_log WHERE action LIKE 'billing.hold.%' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var audits []audit
	for rows.Next() {
		var a audit
		if err := rows.Scan(&a.Action, &a.Actor, &a.Note); err != nil {
			t.Fatal(err)
		}
		audits = append(audits, a)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []audit{
		{"billing.hold.approve", "key:bootstrap", "launch week; expected growth"},
		{"billing.hold.reject", "key:bootstrap", "load test against production"},
	}
	if fmt.Sprint(audits) != fmt.Sprint(want) {
		t.Errorf("audit_log holds %v, want %v", audits, want)
	}
}

// waitTrue waits until the script expr is true in the page.
func (u *ui) waitTrue(what, expr string) {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(u.ctx, 20*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr)); err != nil {
		u.t.Fatalf("waiting until %s: %v; the page's error: %q", what, err, u.text("#error"))
	}
}

// TestConsoleAnomaliesAndWebhooks clicks through the anomalies and
// webhooks pages in headless Chromium: episodes across tenants and by
// tenant, a tenant's endpoints without their secret, an endpoint's
// deliveries, and a dead delivery redelivered by an admin (pending again,
// audited) while a viewer is offered no action and refused by the server.
func TestConsoleAnomaliesAndWebhooks(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	for _, tn := range []string{"acme", "globex"} {
		s.mustCall("PUT", "/v1/admin/tenants/"+tn, adminKey, `{}`, 200)
	}
	var viewer struct{ ID, Key string }
	if s.call("POST", "/v1/admin/keys", adminKey, `{"role":"viewer"}`, &viewer) != http.StatusCreated {
		t.Fatal("creating a viewer key")
	}

	// Two episodes: acme's spike, still going on, and globex's drop, ended.
	hour := s.now.Truncate(time.Hour).Add(-5 * time.Hour)
	sens, err := anomaly.ParseSensitivity("4")
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range []struct {
		tenant, meter string
		dir           anomaly.Direction
		hour          time.Time
		observed      int64
		expected      *big.Rat
		score         *big.Rat
		ended         bool
	}{
		{"acme", "api_calls", anomaly.Spike, hour, 98765432109876, big.NewRat(2401, 2), big.NewRat(4213, 100), false},
		{"globex", "tokens", anomaly.Drop, hour.Add(-2 * time.Hour), 3, big.NewRat(900, 1), big.NewRat(-1275, 100), true},
	} {
		series := anomaly.Series{Tenant: ep.tenant, Meter: ep.meter}
		a := anomaly.Anomaly{
			Episode:  anomaly.Episode{ID: anomaly.EpisodeID(series, ep.dir, ep.hour), Series: series, Direction: ep.dir, Hour: ep.hour, LastHour: ep.hour.Add(time.Hour)},
			Observed: big.NewInt(ep.observed), Expected: ep.expected, Score: ep.score, Sensitivity: sens, DetectedAt: ep.hour.Add(time.Hour),
		}
		if _, err := anomalydata.Insert(ctx, s.db.Pool, a); err != nil {
			t.Fatal(err)
		}
		if ep.ended {
			if err := anomalydata.End(ctx, s.db.Pool, anomaly.Ended{ID: a.ID, EndedAt: ep.hour.Add(2 * time.Hour)}); err != nil {
				t.Fatal(err)
			}
		}
	}

	// An endpoint of acme (its description is markup, shown as text) that
	// is failing, with a delivered, a dead and a failing delivery.
	var ep struct{ ID, Secret string }
	if got := s.call("POST", "/v1/admin/tenants/acme/webhooks", adminKey,
		`{"url":"https://hooks.example.com/usagemeter","kinds":["quota.exceeded","spend.threshold"],"spend_thresholds":["500.00"],"description":"<img id=\"pwn\" src=\"x\">on-call"}`, &ep); got != http.StatusCreated || !strings.HasPrefix(ep.Secret, "whsec_") {
		t.Fatalf("creating an endpoint: %d %+v", got, ep)
	}
	for i, kind := range []string{"quota.exceeded", "spend.threshold", "quota.exceeded"} {
		evID := fmt.Sprintf("evt-%d", i+1)
		if _, err := webhooks.Enqueue(ctx, s.db.Pool, webhooks.Delivery{EndpointID: ep.ID, EventID: evID, EventType: kind, Tenant: "acme",
			Body: `{"id":"` + evID + `","type":"` + kind + `","created":1,"tenant":"acme","data":{}}`, CreatedAt: s.now.Add(time.Duration(i-10) * time.Minute),
			RetryUntil: s.now.Add(72 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := webhooks.ListDeliveries(ctx, s.db.Pool, webhooks.Filter{EndpointID: ep.ID})
	if err != nil || len(ds) != 3 {
		t.Fatalf("deliveries: %v, %v", ds, err)
	}
	byEvent := map[string]int64{}
	for _, d := range ds {
		byEvent[d.EventID] = d.ID
	}
	delivered, dead, retrying := byEvent["evt-1"], byEvent["evt-2"], byEvent["evt-3"]
	at := s.now.Add(-5 * time.Minute)
	for id, o := range map[int64]webhooks.Outcome{
		delivered: {At: at, HTTPStatus: 204, Delivered: true},
		dead:      {At: at, HTTPStatus: 500, Error: "receiver answered 500 <b>Internal</b>", Dead: true},
		retrying:  {At: at, Error: "connection refused", Next: s.now.Add(time.Hour)},
	} {
		if err := webhooks.Settle(ctx, s.db.Pool, id, o); err != nil {
			t.Fatal(err)
		}
	}
	if failing, err := webhooks.Failed(ctx, s.db.Pool, ep.ID, at, 0); err != nil || !failing {
		t.Fatalf("marking the endpoint failing: %v, %v", failing, err)
	}

	u := newUI(t)
	u.do("setting up the browser", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: `
			window.cspViolations = [];
			document.addEventListener("securitypolicyviolation", e => window.cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline")));`})
		return err
	}))
	u.signIn(s.ingest.URL, adminKey)
	u.do("the tenants page", chromedp.WaitVisible(`#view[data-ready="tenants"]`))

	// Anomalies: every tenant's, then one tenant's.
	u.open("anomalies")
	for _, want := range []string{"acme", "globex", "api_calls", "tokens", "spike", "drop", "98765432109876", "1200.5", "42.13", "-12.75", "ongoing", "ended"} {
		u.waitText("#anomalies", want)
	}
	if n := u.eval(`document.querySelectorAll("#anomalies tbody tr").length`); n != 2 {
		t.Errorf("the anomalies page shows %d episodes, want 2", n)
	}
	u.shot("11-anomalies")
	u.selectOption("#anomaly-tenant", "globex")
	u.waitTrue("only globex's episode is shown", `(t => !!t && t.tBodies[0].rows.length === 1 && t.textContent.includes("globex"))(document.getElementById("anomalies"))`)
	u.selectOption("#anomaly-tenant", "")
	u.waitTrue("every tenant's episodes are shown again", `(t => !!t && t.tBodies[0].rows.length === 2)(document.getElementById("anomalies"))`)
	u.do("filtering by a meter", chromedp.SendKeys("#anomaly-meter", "nothing_here"), chromedp.Click("#anomaly-filter"))
	u.waitText("#anomalies-out", "No anomalies match")

	// Webhooks: acme's endpoint, failing, without its secret; its deliveries.
	u.open("webhooks")
	u.selectOption("#webhook-tenant", "acme")
	for _, want := range []string{"https://hooks.example.com/usagemeter", "failing", "quota.exceeded, spend.threshold", "500.00", `<img id="pwn" src="x">on-call`} {
		u.waitText("#webhooks", want)
	}
	u.click("deliveries-" + ep.ID)
	for _, want := range []string{"delivered", "dead", "failing", "receiver answered 500 <b>Internal</b>", "connection refused", "evt-2"} {
		u.waitText("#deliveries", want)
	}
	if n := u.eval(`document.querySelectorAll("#pwn, #deliveries b").length`); n != 0 {
		t.Error("a description or an error was rendered as markup")
	}
	if n := u.eval(fmt.Sprintf(`document.body.textContent.includes(%q) || document.body.textContent.includes("whsec_") ? 1 : 0`, ep.Secret)); n != 0 {
		t.Error("the webhooks page shows a secret")
	}
	offered := u.eval(fmt.Sprintf(`(ids => ids.map(id => document.querySelector('[data-testid="redeliver-' + id + '"]') ? 1 : 0).join(""))([%d, %d, %d]) === "011" ? 1 : 0`, delivered, dead, retrying))
	if offered != 1 {
		t.Error("Redeliver is not offered on exactly the dead and the failing delivery")
	}
	u.click(fmt.Sprint("event-", dead))
	u.waitText("#delivery-body", `"id": "evt-2"`)
	u.shot("12-webhooks")

	// Redeliver the dead one: a confirmation (the route takes no note), then
	// pending again, audited, and the endpoint active again.
	u.click(fmt.Sprint("redeliver-", dead))
	u.do("opening the confirmation", chromedp.WaitVisible("#confirm-ok"))
	if u.eval(`document.getElementById("confirm-ok").disabled || !document.getElementById("confirm-note").hidden ? 1 : 0`) != 0 {
		t.Error("the redelivery's confirmation asks for a note the route does not record")
	}
	u.shot("13-webhooks-confirm")
	u.do("confirming the redelivery", chromedp.Click("#confirm-ok"), chromedp.WaitNotVisible("#confirm-ok"))
	u.waitText("#notice", fmt.Sprintf("Delivery %d is pending again", dead))
	u.waitText("#deliveries", "evt-2")
	if u.eval(fmt.Sprintf(`document.querySelector('[data-testid="redeliver-%d"]') ? 1 : 0`, dead)) != 0 {
		t.Error("the redelivered delivery still offers Redeliver")
	}
	u.waitText("#webhooks", "active")
	u.shot("14-webhooks-redelivered")
	d, err := webhooks.GetDelivery(ctx, s.db.Pool, dead)
	if err != nil || d.Status != webhooks.StatusPending || d.Attempts != 0 || d.EventID != "evt-2" {
		t.Errorf("the redelivered delivery: %+v, %v", d, err)
	}
	var actor string
	if err := s.db.Pool.QueryRow(ctx, `SELECT actor FROM audit_log WHERE action = 'webhook.redeliver' AND target = $1`,
		fmt.Sprint("webhook_delivery:", dead)).Scan(&actor); err != nil || actor != "key:bootstrap" {
		t.Errorf("the redelivery's audit row: actor %q, %v", actor, err)
	}
	u.noCSPViolations()

	// Viewer: both pages, no action offered, the redelivery refused.
	u.do("signing out", chromedp.Click("#logout"), chromedp.WaitVisible("#key"))
	u.signIn(s.ingest.URL, viewer.Key)
	u.do("the tenants page as a viewer", chromedp.WaitVisible(`#view[data-ready="tenants"]`))
	u.open("anomalies")
	u.waitText("#anomalies", "globex")
	u.open("webhooks")
	u.selectOption("#webhook-tenant", "acme")
	u.waitText("#webhooks", "hooks.example.com")
	u.click("deliveries-" + ep.ID)
	u.waitText("#deliveries", "connection refused")
	if n := u.eval(`document.querySelectorAll('[data-testid^="redeliver-"]').length`); n != 0 {
		t.Errorf("a viewer is offered %d redeliveries", n)
	}
	u.shot("15-viewer-webhooks")
	u.noCSPViolations()
	if got := s.call("POST", fmt.Sprintf("/v1/admin/webhooks/deliveries/%d/redeliver", retrying), viewer.Key, "", nil); got != http.StatusForbidden {
		t.Errorf("a viewer's redelivery: %d, want 403", got)
	}
	if d, err := webhooks.GetDelivery(ctx, s.db.Pool, retrying); err != nil || d.Attempts != 1 {
		t.Errorf("the viewer's refused redelivery changed the delivery: %+v, %v", d, err)
	}
}
