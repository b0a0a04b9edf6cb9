package loadgen_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/testkit/loadgen"
	"github.com/usagemeter/metering/internal/testkit/stack"
	"github.com/usagemeter/metering/internal/testkit/stack/stacktest"
	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

// TestDemo runs `make demo`'s load generator against the pipeline as
// processes and checks that what it prints is what the demo promises:
// usage equal to its ground truth (Report fails otherwise), the crossing
// tenant blocked, its three breaches read back from quota.breaches, the AI
// tenant's tokens per model equal to its ground truth and its distinct
// users counted, and
// a reconciliation with Stripe in which every demo row is ok.
func TestDemo(t *testing.T) {
	work := stacktest.TempWork(t, "demo-")
	root, _ := filepath.Abs(filepath.Join("..", "..", ".."))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	fake := stripefake.New(stripefake.Config{})
	for _, m := range []string{"api_calls", "tokens"} {
		fake.EnsureMeter(m)
	}
	srv := httptest.NewServer(fake)
	t.Cleanup(func() { fake.Close(); srv.Close() })
	var progress strings.Builder
	st, err := stack.Start(ctx, stack.Options{Root: root, Work: work, StripeBase: srv.URL,
		Env: map[string][]string{"biller": {"SYNC_INTERVAL=500ms"}}}, &progress)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	t.Cleanup(st.Stop)

	cfg := loadgen.Config{IngestURL: st.URLs["ingest"], BillerURL: st.URLs["biller"], AdminKey: stack.AdminKey,
		Brokers: []string{st.Brokers}, Events: 7000, Rate: 20000, Batch: 200, Tenants: 5, DupShare: 0.3, LateShare: 0.05, Workers: 4}
	if err := loadgen.Setup(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	res, err := loadgen.Send(ctx, cfg, &progress)
	if err != nil {
		t.Fatalf("send: %v\n%s", err, progress.String())
	}
	if res.Resent == 0 || res.Late == 0 || res.Sent-res.Resent != 7000 {
		t.Fatalf("traffic not as configured: %+v", res)
	}
	var out strings.Builder
	if err := loadgen.Report(ctx, cfg, res, &out); err != nil {
		logs, _ := os.ReadFile(st.LogFile)
		t.Fatalf("report: %v\n%s\nservices' log (last 8 KiB):\n%s", err, out.String(), logs[max(0, len(logs)-8<<10):])
	}
	report := out.String()
	t.Log("\n" + report)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^api_calls\s+500\s+\d+\s+0\s+blocked$`),
		regexp.MustCompile(`demo-crosser\s+api_calls\s+warning\s+\d+/500`),
		regexp.MustCompile(`demo-crosser\s+api_calls\s+exceeded\s+\d+/500`),
		regexp.MustCompile(`demo-crosser\s+api_calls\s+blocked\s+\d+/500`),
		regexp.MustCompile(`usage page: http://\S+/ui\?tenant=demo-crosser#key=mk_\S+`),
		regexp.MustCompile(`(?m)^\s*gpt-4o\s+[1-9]\d*\s+[1-9]\d*$`),
		regexp.MustCompile(`(?m)^\s*claude-sonnet\s+[1-9]\d*\s+[1-9]\d*$`),
		regexp.MustCompile(`distinct users: [1-9]\d* \(this run's events came from [1-9]\d*\)`),
	} {
		if !want.MatchString(report) {
			t.Errorf("report lacks %s", want)
		}
	}
	// The usage page's key is a read-only key of that tenant, not the
	// operator's admin key.
	if m := regexp.MustCompile(`#key=(\S+)`).FindStringSubmatch(report); m == nil || m[1] == cfg.AdminKey {
		t.Errorf("the usage page link carries the admin key or none: %v", m)
	} else {
		req, _ := http.NewRequestWithContext(ctx, "POST", cfg.IngestURL+"/v1/events", strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer "+m[1])
		req.Header.Set("Content-Type", "application/json")
		if resp, err := http.DefaultClient.Do(req); err != nil {
			t.Error(err)
		} else {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "read_only_key") {
				t.Errorf("the usage page key may write: %d %s", resp.StatusCode, body)
			}
		}
	}
	// Every reconciliation row of a demo tenant is ok once the biller
	// has synced: nothing drifts, nothing is left pending.
	rows := 0
	for _, l := range strings.Split(report[strings.Index(report, "reconciliation with Stripe"):], "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || !strings.HasPrefix(f[0], "demo-") {
			continue
		}
		rows++
		if f[len(f)-1] != "ok" && !strings.Contains(l, " ok ") {
			t.Errorf("reconciliation row not ok: %s", l)
		}
	}
	if rows == 0 {
		t.Errorf("no reconciliation rows for the demo tenants")
	}
}
