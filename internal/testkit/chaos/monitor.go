package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/testkit/stripefake"
)

// overReport compares every running total the Stripe test server records
// with the metered month total in Postgres, as it happens.
//
// Correct billing keeps Stripe(t) ≤ metered(t) at every instant t: the
// biller sends deltas up to a metered total it read, and the metered total
// of a month never shrinks (values are ≥ 0 and windows only grow). So a
// metered total read at any moment at or after t is an upper bound of
// metered(t), and Stripe(t) above it proves an over-report, never a false
// one. The check is as tight as it gets: it reads Postgres inside OnTotal,
// while the test server holds its lock, so Stripe's total of that
// customer, meter and month stays exactly the recorded one during the read.
// A read that fails (Postgres restarting) is retried later, still an upper
// bound, only looser (Deferred counts those).
type overReport struct {
	pool     atomic.Pointer[pgxpool.Pool]
	mu       sync.Mutex
	checked  int
	deferred []stripefake.RunningTotal
	late     int
	over     int
	max      int64
	worst    string
}

func (o *overReport) metered(ctx context.Context, rt stripefake.RunningTotal) (int64, error) {
	pool := o.pool.Load()
	if pool == nil {
		return 0, errors.New("no database yet")
	}
	var v int64
	err := pool.QueryRow(ctx, `SELECT coalesce((SELECT w.value::bigint FROM usage_windows w JOIN tenants t USING (tenant)
		WHERE t.stripe_customer_id = $1 AND w.meter = $2 AND w.group_key = '' AND w.granularity = 'month' AND w.window_start = $3), 0)`,
		rt.Customer, rt.EventName, rt.Period).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("metered total of %s/%s: %w", rt.Customer, rt.EventName, err)
	}
	return v, nil
}

// onTotal is stripefake's Config.OnTotal.
func (o *overReport) onTotal(rt stripefake.RunningTotal) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	m, err := o.metered(ctx, rt)
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		o.deferred = append(o.deferred, rt)
		return
	}
	o.judge(rt, m)
}

// judge records one comparison; o.mu is held.
func (o *overReport) judge(rt stripefake.RunningTotal, metered int64) {
	o.checked++
	if d := rt.Total - metered; d > 0 {
		o.over++
		if d > o.max {
			o.max = d
			o.worst = fmt.Sprintf("%s %s %s: Stripe %d > metered %d (after %s)", rt.Customer, rt.EventName,
				rt.Period.Format("2006-01"), rt.Total, metered, rt.Identifier)
		}
	}
}

// flush checks the deferred totals it can read now.
func (o *overReport) flush(ctx context.Context) {
	o.mu.Lock()
	todo := o.deferred
	o.deferred = nil
	o.mu.Unlock()
	var again []stripefake.RunningTotal
	for _, rt := range todo {
		m, err := o.metered(ctx, rt)
		if err != nil {
			again = append(again, rt)
			continue
		}
		o.mu.Lock()
		o.late++
		o.judge(rt, m)
		o.mu.Unlock()
	}
	o.mu.Lock()
	o.deferred = append(again, o.deferred...)
	o.mu.Unlock()
}

// run flushes deferred checks every second until ctx ends.
func (o *overReport) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
			o.flush(ctx)
		}
	}
}

// fill copies the figures so far into the report.
func (o *overReport) fill(rep *Report) {
	o.mu.Lock()
	defer o.mu.Unlock()
	rep.TotalsChecked, rep.TotalsDeferred, rep.OverReports, rep.MaxOverReport = o.checked, o.late, o.over, o.max
}

// finish flushes what is left and fills the report.
func (o *overReport) finish(ctx context.Context, rep *Report) error {
	deadline := time.Now().Add(time.Minute)
	for {
		o.flush(ctx)
		o.mu.Lock()
		left := len(o.deferred)
		o.mu.Unlock()
		if left == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	o.pool.Store(nil) // later totals (services stopping) are not judged
	o.fill(rep)
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.deferred) > 0 {
		return fmt.Errorf("%d Stripe running totals could not be compared with Postgres", len(o.deferred))
	}
	if o.over > 0 {
		return fmt.Errorf("the Stripe running total was above the metered total %d times, by %d at most: %s", o.over, o.max, o.worst)
	}
	return nil
}

// stallSampler reads metering_aggregator_partition_stalled from every
// aggregator's /metrics while the run goes on.
type stallSampler struct {
	mu      sync.Mutex
	max     float64
	samples int // scrapes that answered
	stalled map[string]bool
}

// sample scrapes urls once and returns the stalled partitions it saw now.
func (s *stallSampler) sample(ctx context.Context, client *http.Client, urls []string) []string {
	var now []string
	for _, u := range urls {
		req, err := http.NewRequestWithContext(ctx, "GET", u+"/metrics", nil)
		if err != nil {
			continue
		}
		resp, err := client.Do(req)
		if err != nil {
			continue // killed, restarting
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		answered := false
		for sc.Scan() {
			line := sc.Text()
			rest, ok := strings.CutPrefix(line, "metering_aggregator_partition_stalled{")
			if !ok {
				continue
			}
			answered = true
			labels, val, ok := strings.Cut(rest, "} ")
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				continue
			}
			s.mu.Lock()
			s.max = max(s.max, v)
			if v > 0 {
				s.stalled[labels] = true
				now = append(now, u+" "+labels)
			}
			s.mu.Unlock()
		}
		resp.Body.Close()
		if answered || resp.StatusCode == http.StatusOK {
			s.mu.Lock()
			s.samples++
			s.mu.Unlock()
		}
	}
	return now
}

// run samples every 500 ms until ctx ends.
func (s *stallSampler) run(ctx context.Context, urls []string) {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
			s.sample(ctx, client, urls)
		}
	}
}
