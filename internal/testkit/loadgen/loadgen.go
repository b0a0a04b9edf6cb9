// Package loadgen sends realistic usage traffic to a running stack and
// reports what came out: several tenants on two plans, a share of
// duplicate resends, late events, and one tenant pushed through warning,
// exceeded and blocked. `make demo` runs it against `make run`; its
// options make it a load generator for benchmarks too.
//
// Invariant: it only talks to the stack through its public interfaces
// (the HTTP API, the quota.breaches topic, the biller's report), as a
// user would, and keeps its own ground truth to compare with.
//
// Test and dev tooling, not product (see internal/testkit): no product
// package imports it, and it does not import testing, since the dev
// binaries under tools/ link it.
package loadgen

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/topics"
)

// Config of a run.
type Config struct {
	IngestURL, BillerURL string
	AdminKey             string
	Brokers              []string
	Events               int     // unique events to send
	Rate                 int     // events per second offered
	Batch                int     // events per request
	Tenants              int     // tenants on the pro plan, besides the one that crosses its quota
	DupShare             float64 // share of requests' events that are resends
	LateShare            float64 // share of events three days old
	Workers              int
}

// Result is what a run measured.
type Result struct {
	Sent, Resent, Late int
	Throttled          int // 429 and 503 answers, each retried with the same ids
	Elapsed            time.Duration
	Truth              map[string]int64 // tenant/metric → this run's events this month
	// Baseline is each tenant-metric's month total before the run (the
	// stack keeps data between runs).
	Baseline map[string]int64
	// ModelTruth is this run's tokens of the AI tenant per model, and
	// ModelBaseline its meter's totals per model before the run; Users
	// are the distinct users of this run's AI events.
	ModelTruth, ModelBaseline map[string]int64
	Users                     map[string]bool
}

const crosser = "demo-crosser"

type client struct {
	cfg Config
	hc  *http.Client
}

func (c *client) do(ctx context.Context, method, url, contentType string, body []byte) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.cfg.AdminKey)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

func (c *client) put(ctx context.Context, path, body string) error {
	status, _, b, err := c.do(ctx, "PUT", c.cfg.IngestURL+path, "application/json", []byte(body))
	if err != nil {
		return fmt.Errorf("PUT %s: %w", path, err)
	}
	if status != http.StatusOK && status != http.StatusCreated {
		return fmt.Errorf("PUT %s: %d %s", path, status, b)
	}
	return nil
}

// Setup creates the demo plans and tenants (idempotent).
func Setup(ctx context.Context, cfg Config) error {
	c := &client{cfg: cfg, hc: &http.Client{Timeout: 30 * time.Second}}
	if err := c.put(ctx, "/v1/admin/plans/demo-free", `{"quotas":[{"metric":"api_calls","limit":500,"period":"month","burst_percent":10,"hard":true,"unit_price":"0.002"},{"metric":"tokens","limit":100000,"period":"month","unit_price":"0.000002"}]}`); err != nil {
		return err
	}
	if err := c.put(ctx, "/v1/admin/plans/demo-pro", `{"quotas":[{"metric":"api_calls","limit":10000000,"period":"month","burst_percent":10,"unit_price":"0.001"},{"metric":"tokens","limit":null,"unit_price":"0.0000015"}]}`); err != nil {
		return err
	}
	if err := c.put(ctx, "/v1/admin/tenants/"+crosser, `{"plan":"demo-free","stripe_customer_id":"cus_demo_crosser"}`); err != nil {
		return err
	}
	for i := range cfg.Tenants {
		if err := c.put(ctx, fmt.Sprintf("/v1/admin/tenants/demo-%d", i), fmt.Sprintf(`{"plan":"demo-pro","stripe_customer_id":"cus_demo_%d"}`, i)); err != nil {
			return err
		}
	}
	// The AI tenant: tokens per model, and the distinct users who spent
	// them, as two meters of the tokens metric.
	if err := c.put(ctx, "/v1/admin/tenants/"+aiTenant, `{"plan":"demo-pro","stripe_customer_id":"cus_demo_ai"}`); err != nil {
		return err
	}
	if err := c.put(ctx, "/v1/admin/meters/"+modelMeter, `{"metric":"tokens","aggregation":"sum","group_by":["model"],"description":"tokens per model"}`); err != nil {
		return err
	}
	return c.put(ctx, "/v1/admin/meters/"+usersMeter, `{"metric":"tokens","aggregation":"unique_count","property":"user","description":"distinct users who spent tokens"}`)
}

// The AI tenant and its meters.
const (
	aiTenant   = "demo-ai"
	modelMeter = "demo_tokens_by_model"
	usersMeter = "demo_token_users"
)

var aiModels = []string{"gpt-4o", "claude-sonnet", "llama-3-70b"}

// Send offers cfg.Events unique events (plus resends) at cfg.Rate and
// writes a progress line every second to progress.
func Send(ctx context.Context, cfg Config, progress io.Writer) (Result, error) {
	c := &client{cfg: cfg, hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Workers}}}
	res := Result{Truth: map[string]int64{}, Baseline: map[string]int64{}, ModelTruth: map[string]int64{}, ModelBaseline: map[string]int64{}, Users: map[string]bool{}}
	models, _, err := c.meterTotals(ctx, aiTenant, modelMeter, "model")
	if err != nil {
		return res, err
	}
	for m, v := range models {
		res.ModelBaseline[m] = v
	}
	for _, t := range append([]string{crosser, aiTenant}, tenantNames(cfg.Tenants)...) {
		for _, m := range []string{"api_calls", "tokens"} {
			v, err := c.usageTotal(ctx, t, m)
			if err != nil {
				return res, err
			}
			res.Baseline[t+"/"+m] = v
		}
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	now := time.Now().UTC()
	var sent []events.Event
	batches := make(chan []byte, cfg.Workers)
	var throttled, accepted atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range cfg.Workers {
		wg.Go(func() {
			for body := range batches {
				for {
					status, h, b, err := c.do(ctx, "POST", cfg.IngestURL+"/v1/events", "application/json", body)
					if err == nil && status == http.StatusAccepted {
						var r struct{ Accepted int64 }
						_ = json.Unmarshal(b, &r)
						accepted.Add(r.Accepted)
						break
					}
					if err == nil && (status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable) {
						throttled.Add(1)
						wait, _ := strconv.Atoi(h.Get("Retry-After"))
						time.Sleep(time.Duration(max(wait, 1)) * time.Second / 4)
						continue // the same body, the same ids: safe to resend
					}
					errOnce.Do(func() { firstErr = fmt.Errorf("POST /v1/events: %d %s %v", status, b, err) })
					break
				}
			}
		})
	}
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	interval := time.Duration(float64(time.Second) * float64(cfg.Batch) / float64(cfg.Rate))
	next := time.Now()
	unique, crossed := 0, 0
	for unique < cfg.Events && ctx.Err() == nil && firstErr == nil {
		var batch []events.Event
		for len(batch) < cfg.Batch && unique < cfg.Events {
			if len(sent) > 0 && rng.Float64() < cfg.DupShare {
				batch = append(batch, sent[rng.IntN(len(sent))])
				res.Resent++
				continue
			}
			e := events.Event{ID: events.NewID(), Metric: "api_calls", Value: 1, Time: now.Add(-time.Duration(rng.IntN(600)) * time.Second), Source: "loadgen"}
			switch {
			case unique%10 == 0 && crossed < 600:
				crossed++
				e.Tenant = crosser // pushed past 500 × 1.1: warning, exceeded, blocked
			case unique%10 == 5:
				model := aiModels[rng.IntN(len(aiModels))]
				e.Tenant, e.Metric, e.Value = aiTenant, "tokens", 1+rng.Int64N(4000)
				e.Properties = map[string]string{"model": model, "user": fmt.Sprint("user-", rng.IntN(40))}
				res.ModelTruth[model] += e.Value
				res.Users[e.Properties["user"]] = true
			default:
				e.Tenant = fmt.Sprintf("demo-%d", rng.IntN(cfg.Tenants))
				if rng.IntN(2) == 0 {
					e.Metric, e.Value = "tokens", 1+rng.Int64N(2000)
				}
			}
			if rng.Float64() < cfg.LateShare {
				e.Time = now.Add(-72 * time.Hour)
				res.Late++
			}
			batch = append(batch, e)
			sent = append(sent, e)
			// usageTotal sums the month windows of the last year, so the
			// late events count too, in last month early in a month.
			res.Truth[e.Tenant+"/"+e.Metric] += e.Value
			unique++
		}
		body := events.AppendArray(nil, batch)
		res.Sent += len(batch)
		time.Sleep(time.Until(next))
		next = next.Add(interval)
		select {
		case batches <- body:
		case <-ctx.Done():
		}
		select {
		case <-tick.C:
			el := time.Since(start).Seconds()
			fmt.Fprintf(progress, "\r  sent %d events (%d resends, %d late), %d accepted, %d throttled and retried, %.0f events/s   ",
				res.Sent, res.Resent, res.Late, accepted.Load(), throttled.Load(), float64(accepted.Load())/el)
		default:
		}
	}
	close(batches)
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Throttled = int(throttled.Load())
	fmt.Fprintf(progress, "\r  sent %d events (%d resends, %d late) in %s: %d accepted, %d throttled and retried                \n",
		res.Sent, res.Resent, res.Late, res.Elapsed.Round(time.Millisecond), accepted.Load(), res.Throttled)
	if firstErr != nil {
		return res, firstErr
	}
	return res, ctx.Err()
}

func tenantNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("demo-%d", i)
	}
	return names
}

// usageTotal reads a tenant's total of metric over the month windows of
// the last 366 days (the API's default range for window=month).
func (c *client) usageTotal(ctx context.Context, tenant, metric string) (int64, error) {
	status, _, b, err := c.do(ctx, "GET", fmt.Sprintf("%s/v1/usage?tenant=%s&metric=%s&window=month", c.cfg.IngestURL, tenant, metric), "", nil)
	if err != nil || status != http.StatusOK {
		return 0, fmt.Errorf("GET /v1/usage: %d %s %v", status, b, err)
	}
	var u struct{ Total int64 }
	err = json.Unmarshal(b, &u)
	return u.Total, err
}

// meterTotals reads a tenant's totals of meter over the month windows of
// the last 366 days, per value of property (group_by), and the total of
// every group.
func (c *client) meterTotals(ctx context.Context, tenant, meterName, property string) (map[string]int64, int64, error) {
	status, _, b, err := c.do(ctx, "GET", fmt.Sprintf("%s/v1/usage?tenant=%s&meter=%s&window=month%s", c.cfg.IngestURL, tenant, meterName,
		map[bool]string{true: "&group_by=" + property}[property != ""]), "", nil)
	if err != nil || status != http.StatusOK {
		return nil, 0, fmt.Errorf("GET /v1/usage?meter=%s: %d %s %v", meterName, status, b, err)
	}
	var u struct {
		Totals []struct {
			Group map[string]*string
			Value int64
		}
		Total int64
	}
	if err := json.Unmarshal(b, &u); err != nil {
		return nil, 0, fmt.Errorf("GET /v1/usage?meter=%s: %w", meterName, err)
	}
	out := map[string]int64{}
	for _, t := range u.Totals {
		if v := t.Group[property]; v != nil {
			out[*v] = t.Value
		}
	}
	return out, u.Total, nil
}

// Report waits until the stack's usage equals the ground truth, then
// prints usage, quota states, the breaches on quota.breaches and the
// reconciliation report.
func Report(ctx context.Context, cfg Config, res Result, out io.Writer) error {
	c := &client{cfg: cfg, hc: &http.Client{Timeout: 30 * time.Second}}
	fmt.Fprintln(out, "\nwaiting for the aggregator to count everything exactly once...")
	deadline := time.Now().Add(2 * time.Minute)
	keys := make([]string, 0, len(res.Truth))
	for k := range res.Truth {
		keys = append(keys, k)
	}
	for {
		diffs := 0
		for _, k := range keys {
			tenant, metric, _ := strings.Cut(k, "/")
			got, err := c.usageTotal(ctx, tenant, metric)
			if err != nil {
				return err
			}
			if got != res.Baseline[k]+res.Truth[k] {
				diffs++
			}
		}
		models, _, err := c.meterTotals(ctx, aiTenant, modelMeter, "model")
		if err != nil {
			return err
		}
		for m, v := range res.ModelTruth {
			if models[m] != res.ModelBaseline[m]+v {
				diffs++
			}
		}
		if diffs == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d tenant-metrics still differ from the ground truth after 2 minutes", diffs)
		}
		time.Sleep(500 * time.Millisecond)
	}

	fmt.Fprintln(out, "\nusage over the last year, this run's events included (resends counted once):")
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "TENANT\tAPI_CALLS\tTOKENS\t")
	tenants := []string{crosser}
	for i := range min(cfg.Tenants, 8) {
		tenants = append(tenants, fmt.Sprintf("demo-%d", i))
	}
	for _, t := range tenants {
		a, _ := c.usageTotal(ctx, t, "api_calls")
		tk, _ := c.usageTotal(ctx, t, "tokens")
		fmt.Fprintf(tw, "%s\t%d\t%d\t\n", t, a, tk)
	}
	_ = tw.Flush()

	fmt.Fprintf(out, "\n%s's tokens by model (meter %s) and distinct users (meter %s), over the last year:\n", aiTenant, modelMeter, usersMeter)
	models, _, err := c.meterTotals(ctx, aiTenant, modelMeter, "model")
	if err != nil {
		return err
	}
	tw = tabwriter.NewWriter(out, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "MODEL\tTOKENS\tTHIS RUN\t")
	for _, m := range aiModels {
		fmt.Fprintf(tw, "%s\t%d\t%d\t\n", m, models[m], res.ModelTruth[m])
	}
	_ = tw.Flush()
	_, users, err := c.meterTotals(ctx, aiTenant, usersMeter, "")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "distinct users: %d (this run's events came from %d)\n", users, len(res.Users))
	if users < int64(len(res.Users)) {
		return fmt.Errorf("meter %s counts %d distinct users, fewer than the %d this run sent", usersMeter, users, len(res.Users))
	}

	fmt.Fprintf(out, "\nquota states of %s:\n", crosser)
	_, _, b, err := c.do(ctx, "GET", cfg.IngestURL+"/v1/quotas/"+crosser, "", nil)
	if err != nil {
		return err
	}
	var q struct {
		Plan   string
		Quotas []struct {
			Metric    string
			Limit     *int64
			Used      int64
			Remaining *int64
			State     string
		}
	}
	_ = json.Unmarshal(b, &q)
	tw = tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tLIMIT\tUSED\tREMAINING\tSTATE")
	for _, x := range q.Quotas {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", x.Metric, orUnlimited(x.Limit), x.Used, orUnlimited(x.Remaining), x.State)
	}
	_ = tw.Flush()

	fmt.Fprintln(out, "\nbreaches on quota.breaches:")
	if err := printBreaches(ctx, c, out); err != nil {
		fmt.Fprintf(out, "  (could not read the topic: %v)\n", err)
	}

	if cfg.BillerURL != "" {
		fmt.Fprintln(out, "\nreconciliation with Stripe (the biller syncs every SYNC_INTERVAL; waiting for it):")
		if err := printReconciliation(ctx, c, out); err != nil {
			return err
		}
	}
	// The usage page is the tenant's view: open it with a read-only key of
	// that tenant (a week's expiry), not the operator's admin key.
	key, err := c.readKey(ctx, crosser)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nusage page: %s/ui?tenant=%s#key=%s\n", cfg.IngestURL, crosser, key)
	return nil
}

// readKey makes a read-only key of tenant that expires in a week.
func (c *client) readKey(ctx context.Context, tenant string) (string, error) {
	body := fmt.Sprintf(`{"tenant":%q,"scope":"read","expires_in":"168h"}`, tenant)
	status, _, b, err := c.do(ctx, "POST", c.cfg.IngestURL+"/v1/admin/keys", "application/json", []byte(body))
	if err != nil {
		return "", fmt.Errorf("making a read key for %s: %w", tenant, err)
	}
	var k struct{ Key string }
	if status != http.StatusCreated || json.Unmarshal(b, &k) != nil || k.Key == "" {
		return "", fmt.Errorf("making a read key for %s: %d %s", tenant, status, b)
	}
	return k.Key, nil
}

func orUnlimited(n *int64) string {
	if n == nil {
		return "unlimited"
	}
	return strconv.FormatInt(*n, 10)
}

// printBreaches prints the demo tenants' breaches on quota.breaches,
// reading every partition from its first offset up to the end it has now.
// The outbox relay publishes a breach just after its transaction commits,
// so it reads again, for up to 10 s, until the topic holds every breach
// the API lists for the crossing tenant.
func printBreaches(ctx context.Context, c *client, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	status, _, body, err := c.do(ctx, "GET", c.cfg.IngestURL+"/v1/breaches?tenant="+crosser, "", nil)
	if err != nil || status != http.StatusOK {
		return fmt.Errorf("GET /v1/breaches: %d %s %v", status, body, err)
	}
	var listed struct{ Breaches []struct{} }
	if err := json.Unmarshal(body, &listed); err != nil {
		return fmt.Errorf("GET /v1/breaches: %w", err)
	}
	var lines []string
	for deadline := time.Now().Add(10 * time.Second); ; {
		if lines, err = readBreaches(ctx, c.cfg); err != nil {
			return err
		}
		n := 0
		for _, l := range lines {
			if strings.Contains(l, "\t"+crosser+"\t") {
				n++
			}
		}
		if n >= len(listed.Breaches) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DETECTED AT\tTENANT\tMETRIC\tTHRESHOLD\tVALUE/LIMIT\tBREACH ID")
	for _, l := range lines {
		fmt.Fprintln(tw, l)
	}
	return tw.Flush()
}

// readBreaches returns the demo tenants' breaches on the topic, one
// tab-separated line each.
func readBreaches(ctx context.Context, cfg Config) ([]string, error) {
	conn, err := kafka.DialContext(ctx, "tcp", cfg.Brokers[0])
	if err != nil {
		return nil, err
	}
	parts, err := conn.ReadPartitions(topics.QuotaBreaches)
	conn.Close()
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, p := range parts {
		if lines, err = readPartitionBreaches(ctx, cfg, p.ID, lines); err != nil {
			return nil, fmt.Errorf("partition %d: %w", p.ID, err)
		}
	}
	return lines, nil
}

func readPartitionBreaches(ctx context.Context, cfg Config, partition int, lines []string) ([]string, error) {
	leader, err := kafka.DialLeader(ctx, "tcp", cfg.Brokers[0], topics.QuotaBreaches, partition)
	if err != nil {
		return lines, err
	}
	first, end, err := leader.ReadOffsets()
	leader.Close()
	if err != nil || first >= end {
		return lines, err
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: cfg.Brokers, Topic: topics.QuotaBreaches, Partition: partition, MaxWait: 200 * time.Millisecond})
	defer r.Close()
	if err := r.SetOffset(first); err != nil {
		return lines, err
	}
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			return lines, err
		}
		var b struct {
			BreachID                  string `json:"breach_id"`
			Tenant, Metric, Threshold string
			Limit                     int64
			Value                     json.Number
			DetectedAt                time.Time `json:"detected_at"`
		}
		if json.Unmarshal(m.Value, &b) == nil && strings.HasPrefix(b.Tenant, "demo-") {
			lines = append(lines, fmt.Sprintf("%s\t%s\t%s\t%s\t%s/%d\t%s", b.DetectedAt.Format(time.RFC3339), b.Tenant, b.Metric, b.Threshold, b.Value, b.Limit, b.BreachID))
		}
		if m.Offset+1 >= end {
			return lines, nil
		}
	}
}

func printReconciliation(ctx context.Context, c *client, out io.Writer) error {
	deadline := time.Now().Add(90 * time.Second)
	var rows [][]string
	for {
		status, _, b, err := c.do(ctx, "GET", c.cfg.BillerURL+"/v1/reconciliation?format=csv", "", nil)
		if err != nil || status != http.StatusOK {
			return fmt.Errorf("GET /v1/reconciliation: %d %s %v", status, b, err)
		}
		if rows, err = demoRows(b); err != nil {
			return err
		}
		if settled(rows) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	for i, f := range rows {
		if i > 11 { // the header and the first rows make the point
			fmt.Fprintf(tw, "... and %d more rows\n", len(rows)-i)
			break
		}
		fmt.Fprintln(tw, strings.Join([]string{f[0], f[1], f[3], f[4], f[6], f[7], f[10]}, "\t"))
	}
	return tw.Flush()
}

// demoRows parses the reconciliation CSV: the header, the crossing
// tenant's rows, then the other demo tenants'.
func demoRows(body []byte) ([][]string, error) {
	all, err := csv.NewReader(bytes.NewReader(body)).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("reading the reconciliation CSV: %w", err)
	}
	var head, rest [][]string
	for i, f := range all {
		if len(f) < 11 {
			return nil, fmt.Errorf("reconciliation CSV row %d has %d fields, want at least 11", i+1, len(f))
		}
		switch {
		case i == 0 || f[0] == crosser:
			head = append(head, f)
		case strings.HasPrefix(f[0], "demo-"):
			rest = append(rest, f)
		}
	}
	return append(head, rest...), nil
}

// settled reports whether no row (after the header) is still pending
// or drifting.
func settled(rows [][]string) bool {
	for _, f := range rows[min(1, len(rows)):] {
		if f[10] == "pending" || f[10] == "drift" {
			return false
		}
	}
	return true
}
