// Package periodclose decides when a tenant's billing period is complete
// and announces it once on billing.events with period.closed, carrying
// the period's final usage of every meter and group.
//
// A period [start, end) of a tenant is complete when (a) for the
// aggregator's consumer group every partition of usage.events (those
// Kafka lists, with Config.Partitions, and those stored) has a watermark
// at or after end + the allowed lateness (every record
// appended to the log by then is counted: see usagedata.AdvanceOffsetTo
// and usagedata.CaughtUp), and (b) no dead letter of the tenant waits in
// usage_dlq (pending: neither replayed nor discarded). Status says which,
// with the reasons when not.
//
// Invariant: period.closed is queued for a tenant's period at most once,
// in the transaction that records it in billing_period_events, and only
// for a period judged complete; killing the biller at any moment loses
// or duplicates nothing, and two billers closing at once queue it once
// (TestClosesEachCompletePeriodOnce). Likewise grant.expired is queued
// at most once per credit grant, in the transaction that records it in
// credit_grant_expiries, and only once the usage before the expiry is
// counted (ExpireGrants, TestGrantExpiredOnce).
package periodclose

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// DefaultLateness is the allowed lateness when Config names none.
const DefaultLateness = time.Hour

// DefaultLookback is how many months before the current one (less the
// lateness) Close looks at when Config names no other.
const DefaultLookback = 3

// Config of a Closer.
type Config struct {
	// Group and Topic are the aggregator's consumer group and source
	// topic, whose watermarks say how far usage is counted; default
	// "metering-aggregator" and usage.events.
	Group, Topic string
	// Lateness is how long after a period's end records may still be
	// appended for it; default DefaultLateness.
	Lateness time.Duration
	// Lookback is how many months before the month of now - Lateness
	// Close scans for periods not yet announced; default DefaultLookback.
	Lookback int
	// Partitions, when set, lists the topic's partitions in Kafka, so a
	// partition no consumer has stored yet (a topic grown since) keeps
	// periods incomplete; nil trusts the stored partitions.
	Partitions func(ctx context.Context) ([]int, error)
	// Usage reads credit grants' burn-down for ExpireGrants (with the
	// default plan); nil: no grant expiry is announced.
	Usage *usagedata.Reader
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Closer judges and announces periods. Periods are UTC calendar months,
// as billing_periods and the month windows are.
type Closer struct {
	pool *pgxpool.Pool
	cfg  Config
}

// New returns a Closer on pool.
func New(pool *pgxpool.Pool, cfg Config) *Closer {
	if cfg.Group == "" {
		cfg.Group = "metering-aggregator"
	}
	if cfg.Topic == "" {
		cfg.Topic = topics.UsageEvents
	}
	if cfg.Lateness <= 0 {
		cfg.Lateness = DefaultLateness
	}
	if cfg.Lookback <= 0 {
		cfg.Lookback = DefaultLookback
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Closer{pool: pool, cfg: cfg}
}

// Status is a period's completeness: Complete, or the Reasons it is not.
type Status struct {
	Complete bool     `json:"complete"`
	Reasons  []string `json:"reasons,omitempty"`
}

// String is "complete", or the reasons joined by "; ".
func (s Status) String() string {
	if s.Complete {
		return "complete"
	}
	return strings.Join(s.Reasons, "; ")
}

// Judge says whether a period ending at end is complete with lateness,
// given the group's partitions and the tenant's waiting dead letters. A
// reason names the partitions behind, with what they reached and what
// they need (partitions that reached the same second share one reason:
// "partitions 0-3, 7 applied up to ..."), and the dead letters that wait.
func Judge(parts []billingdata.PartitionWatermark, waiting int, end time.Time, lateness time.Duration) Status {
	need := end.Add(lateness).UTC().Format(time.RFC3339)
	var reasons []string
	if len(parts) == 0 {
		reasons = append(reasons, "no partition of "+topics.UsageEvents+" has been consumed yet")
	}
	// The partitions behind, by what they reached; the reasons in order of
	// their lowest partition.
	var reached []string
	behind := map[string][]int{}
	for _, p := range parts {
		var at string
		switch {
		case p.Watermark == nil:
			at = ""
		case p.Watermark.Before(end.Add(lateness)):
			at = p.Watermark.UTC().Truncate(time.Second).Format(time.RFC3339)
		default:
			continue
		}
		if _, ok := behind[at]; !ok {
			reached = append(reached, at)
		}
		behind[at] = append(behind[at], p.Partition)
	}
	slices.SortFunc(reached, func(a, b string) int { return slices.Min(behind[a]) - slices.Min(behind[b]) })
	for _, at := range reached {
		ps := behind[at]
		noun := "partition"
		if len(ps) > 1 {
			noun = "partitions"
		}
		if at == "" {
			reasons = append(reasons, fmt.Sprintf("%s %s %s no watermark yet, needs %s", noun, partitionList(ps), map[bool]string{true: "have", false: "has"}[len(ps) > 1], need))
		} else {
			reasons = append(reasons, fmt.Sprintf("%s %s applied up to %s, needs %s", noun, partitionList(ps), at, need))
		}
	}
	switch {
	case waiting == 1:
		reasons = append(reasons, "1 dead letter waits")
	case waiting > 1:
		reasons = append(reasons, fmt.Sprintf("%d dead letters wait", waiting))
	}
	return Status{Complete: len(reasons) == 0, Reasons: reasons}
}

// partitionList writes partition numbers as runs: "0-3, 5, 7-11".
func partitionList(ps []int) string {
	ps = slices.Clone(ps)
	slices.Sort(ps)
	var runs []string
	for i := 0; i < len(ps); {
		j := i
		for j+1 < len(ps) && ps[j+1] == ps[j]+1 {
			j++
		}
		if j > i {
			runs = append(runs, fmt.Sprintf("%d-%d", ps[i], ps[j]))
		} else {
			runs = append(runs, strconv.Itoa(ps[i]))
		}
		i = j + 1
	}
	return strings.Join(runs, ", ")
}

// errPartitions is the reason given when Kafka cannot list the topic's
// partitions (the error itself, which names brokers, goes to the log).
const errPartitions = "the partitions of usage.events could not be listed from Kafka"

// watermarks reads the stored partitions, with each partition Kafka lists
// and none stored added without a watermark.
func (c *Closer) watermarks(ctx context.Context) ([]billingdata.PartitionWatermark, error) {
	parts, err := billingdata.Watermarks(ctx, c.pool, c.cfg.Group, c.cfg.Topic)
	if err != nil || c.cfg.Partitions == nil {
		return parts, err
	}
	listed, err := c.cfg.Partitions(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing the partitions of %s: %w", c.cfg.Topic, err)
	}
	stored := make(map[int]bool, len(parts))
	for _, p := range parts {
		stored[p.Partition] = true
	}
	for _, p := range listed {
		if !stored[p] {
			parts = append(parts, billingdata.PartitionWatermark{Partition: p, NextOffset: -1})
		}
	}
	slices.SortFunc(parts, func(a, b billingdata.PartitionWatermark) int { return a.Partition - b.Partition })
	return parts, nil
}

// Statuses judges the period [start, end) for each of tenants. start is
// unused today (completeness depends on the period's end only); the
// period is a parameter so that periods other than months fit.
func (c *Closer) Statuses(ctx context.Context, start, end time.Time, tenants []string) (map[string]Status, error) {
	parts, listErr := c.watermarks(ctx)
	unlisted := listErr != nil
	if unlisted {
		c.cfg.Logger.WarnContext(ctx, "judging period completeness without Kafka's partition list", "err", listErr)
		var err error
		if parts, err = billingdata.Watermarks(ctx, c.pool, c.cfg.Group, c.cfg.Topic); err != nil {
			return nil, err
		}
	}
	waiting, err := billingdata.WaitingDeadLetters(ctx, c.pool, tenants)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Status, len(tenants))
	for _, t := range tenants {
		st := Judge(parts, waiting[t], end, c.cfg.Lateness)
		if unlisted {
			st.Complete, st.Reasons = false, append([]string{errPartitions}, st.Reasons...)
		}
		out[t] = st
	}
	return out, nil
}

// Result says what one Close did.
type Result struct {
	// Closed periods were announced by this call; Waiting ones are
	// counted far enough but wait for dead letters.
	Closed, Waiting int
}

// reach is the instant every stored partition is applied up to (the
// least watermark), and false when no period can be complete: no
// partition is stored, or one has no watermark yet.
func reach(parts []billingdata.PartitionWatermark) (time.Time, bool) {
	var least time.Time
	for i, p := range parts {
		if p.Watermark == nil {
			return time.Time{}, false
		}
		if i == 0 || p.Watermark.Before(least) {
			least = *p.Watermark
		}
	}
	return least, len(parts) > 0
}

// Close announces every tenant's billing period (its month windows: the
// periods of its billing cycle, UTC calendar months without one) that
// ended within the lookback, has usage, is complete and is not announced
// yet: each in its own transaction that records it and queues its
// period.closed event with the period's [start, end). It scans only the
// periods the least watermark has passed by the lateness, so a sync reads
// no window of a period that cannot be complete yet.
func (c *Closer) Close(ctx context.Context) (Result, error) {
	now := c.cfg.Now().UTC()
	parts, err := c.watermarks(ctx)
	if err != nil {
		return Result{}, err
	}
	least, ok := reach(parts)
	if !ok {
		return Result{}, nil
	}
	periods, err := accounts.AllSchedules(ctx, c.pool)
	if err != nil {
		return Result{}, err
	}
	// Periods ending at or before least - lateness may be complete; they
	// start before it.
	reached := least.Add(-c.cfg.Lateness)
	from := c.lookbackFrom(periods, now)
	if !from.Before(reached) {
		return Result{}, nil
	}
	listed, err := billingdata.UnannouncedMonths(ctx, c.pool, from, reached)
	if err != nil || len(listed) == 0 {
		return Result{}, err
	}
	var todo []billingdata.TenantPeriod
	for _, p := range listed {
		if !periods.Of(p.Tenant).End(p.Start).After(reached) {
			todo = append(todo, p)
		}
	}
	if len(todo) == 0 {
		return Result{}, nil
	}
	tenants := make([]string, 0, len(todo))
	for _, p := range todo {
		tenants = append(tenants, p.Tenant)
	}
	waiting, err := billingdata.WaitingDeadLetters(ctx, c.pool, tenants)
	if err != nil {
		return Result{}, err
	}
	var res Result
	for _, p := range todo {
		end := periods.Of(p.Tenant).End(p.Start)
		if st := Judge(parts, waiting[p.Tenant], end, c.cfg.Lateness); !st.Complete {
			res.Waiting++
			c.cfg.Logger.DebugContext(ctx, "period not complete yet", "tenant", p.Tenant, "period", p.Start.Format("2006-01"), "why", st.String())
			continue
		}
		closed, err := c.announce(ctx, p.Tenant, p.Start, end, now)
		if err != nil {
			return res, err
		}
		if closed {
			res.Closed++
			c.cfg.Logger.InfoContext(ctx, "period closed", "tenant", p.Tenant, "period", p.Start.Format("2006-01"))
		}
	}
	return res, nil
}

// announce records tenant's period [start, end) and queues its
// period.closed event with the period's usage, in one transaction; false
// when it was already announced.
func (c *Closer) announce(ctx context.Context, tenant string, start, end, now time.Time) (bool, error) {
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("beginning the close of %s's period %s: %w", tenant, start.Format("2006-01"), err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	usages, err := billingdata.MonthUsages(ctx, tx, tenant, start)
	if err != nil {
		return false, err
	}
	data := billingevents.PeriodClosed{PeriodStart: start, PeriodEnd: end, AllowedLateness: c.cfg.Lateness.String(),
		Usage: make([]billingevents.MeterUsage, len(usages))}
	for i, u := range usages {
		data.Usage[i] = billingevents.MeterUsage{Meter: u.Meter, Metric: u.Metric, Aggregation: u.Aggregation, Group: u.Group,
			Value: usagedata.NumericInt(u.Value)}
	}
	ev, err := billingevents.New(tenant, now, data)
	if err != nil {
		return false, err
	}
	recorded, err := billingdata.RecordPeriodClosed(ctx, tx, tenant, start, end, ev.ID)
	if err != nil || !recorded {
		return false, err
	}
	if err := billingevents.Enqueue(ctx, tx, ev); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("committing the close of %s's period %s: %w", tenant, start.Format("2006-01"), err)
	}
	return true, nil
}

// lookbackFrom is where Close starts looking: Lookback months before the
// month of now - Lateness, or, for a tenant with a billing cycle, as many
// of its periods before its current one, whichever is earlier (a yearly
// period started long before).
func (c *Closer) lookbackFrom(periods billingcycle.Schedules, now time.Time) time.Time {
	at := now.Add(-c.cfg.Lateness)
	from := windows.Month.Start(at).AddDate(0, -c.cfg.Lookback, 0)
	for _, s := range periods {
		p := s.Start(at)
		for range c.cfg.Lookback {
			p = s.Start(p.Add(-time.Nanosecond))
		}
		if p.Before(from) {
			from = p
		}
	}
	return from
}
