package usagedata

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/planperiod"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/windows"
)

// ErrUnknownTenant is returned for a tenant that was never registered.
var ErrUnknownTenant = errors.New("unknown tenant")

// Reader reads usage for the API: usage over a time range, each quota's
// state in the current period, breaches and the running bill. Every
// figure comes from usage_windows as the aggregator committed it, so the
// API, the quota states the aggregator evaluates and the biller's totals
// agree.
type Reader struct {
	q           storage.Executor
	defaultPlan string
}

// NewReader returns a Reader on q (a pool).
func NewReader(q storage.Executor) *Reader { return &Reader{q: q} }

// Window is one window's usage.
type Window struct {
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	Value  *big.Int  `json:"value"`
	Events int64     `json:"events"`
}

// periodsOf returns tenant's billing periods, which end its month windows,
// when g is Month; for another granularity, the zero schedule (EndIn does
// not read it).
func periodsOf(ctx context.Context, q storage.Executor, tenant string, g windows.Granularity) (billingcycle.Schedule, error) {
	if g != windows.Month {
		return billingcycle.Schedule{}, nil
	}
	return accounts.TenantSchedule(ctx, q, tenant)
}

// Usage returns tenant's windows of granularity g for metric with start in
// [from, to), oldest first, and their total. A month window is the
// tenant's billing period.
func (r *Reader) Usage(ctx context.Context, tenant, metric string, g windows.Granularity, from, to time.Time) ([]Window, *big.Int, error) {
	sched, err := periodsOf(ctx, r.q, tenant, g)
	if err != nil {
		return nil, nil, err
	}
	rows, err := r.q.Query(ctx, `SELECT window_start, value, events FROM usage_windows
		WHERE tenant = $1 AND meter = $2 AND group_key = '' AND granularity = $3 AND window_start >= $4 AND window_start < $5
		ORDER BY window_start`, tenant, metric, string(g), from, to)
	if err != nil {
		return nil, nil, fmt.Errorf("reading usage: %w", err)
	}
	total := new(big.Int)
	ws, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Window, error) {
		var w Window
		var v pgtype.Numeric
		if err := row.Scan(&w.Start, &v, &w.Events); err != nil {
			return w, err
		}
		w.Start = w.Start.UTC()
		w.End = g.EndIn(sched, w.Start)
		w.Value = NumericInt(v)
		total.Add(total, w.Value)
		return w, nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reading usage: %w", err)
	}
	return ws, total, nil
}

// QuotaStatus is one quota in the current period.
type QuotaStatus struct {
	Metric string `json:"metric"`
	// Meter is the meter the quota limits: the metric for its implicit
	// meter. Filter and PerGroup say which of its groups: those carrying
	// Filter's values together (every group when empty), or each group
	// on its own.
	Meter    string            `json:"meter"`
	Filter   map[string]string `json:"filter"`
	PerGroup bool              `json:"per_group"`
	// Limit and Remaining are nil (JSON null) for an unlimited metric.
	// For a per_group quota, Used, Remaining and State are those of the
	// group with the most usage.
	Limit        *int64      `json:"limit"`
	Used         *big.Int    `json:"used"`
	Remaining    *big.Int    `json:"remaining"`
	PeriodStart  time.Time   `json:"period_start"`
	PeriodEnd    time.Time   `json:"period_end"`
	State        quota.State `json:"state"`
	Hard         bool        `json:"hard"`
	BurstPercent int         `json:"burst_percent"`
	// Thresholds are the quota's warning percentages, lowest first.
	Thresholds []int `json:"thresholds"`
	// Grace is a hard quota's grace before it blocks (absent: none).
	Grace *GraceStatus `json:"grace,omitempty"`
	// Groups, for a per_group quota only, are the MaxQuotaGroups groups of
	// the period with the most usage, most first (ties by group key), and
	// GroupsTotal how many groups the period has.
	Groups      []GroupStatus `json:"groups,omitzero"`
	GroupsTotal int           `json:"groups_total,omitzero"`
	// Allowance and Grants, only for a quota with credit grants active in
	// the period (grants.go): the limit raised by the grants, against
	// which Remaining and State are then reckoned, and the grants.
	Allowance *big.Int      `json:"allowance,omitzero"`
	Grants    []GrantStatus `json:"grants,omitzero"`
}

// GraceStatus is a hard quota's grace: how long after the period's first
// exceeded crossing, and how many units past the limit, usage beyond the
// blocking point stays exceeded; and, when known, when or at what usage
// it ends.
type GraceStatus struct {
	// Duration is a Go duration ("24h0m0s"), empty for none.
	Duration string `json:"duration,omitempty"`
	// Amount is in the meter's units, nil for none.
	Amount *int64 `json:"amount,omitempty"`
	// EndsAt is when the grace by time runs out: the exceeded crossing's
	// time + Duration (absent until the quota is exceeded in the period).
	EndsAt *time.Time `json:"ends_at,omitempty"`
	// EndsAbove is the usage beyond which the grace by amount runs out.
	EndsAbove *big.Int `json:"ends_above,omitempty"`
	// Active reports that usage is past the blocking point and the grace
	// holds the state at exceeded.
	Active bool `json:"active"`
	// ms and amount as stored; grace builds the rule's Grace from them.
	ms int64
}

// rule returns the quota.Rule of q.
func (q QuotaStatus) rule() quota.Rule {
	r := quota.Rule{Limit: q.Limit, BurstPercent: q.BurstPercent, Hard: q.Hard, Thresholds: q.Thresholds}
	if q.Grace != nil {
		r.Grace = quota.Grace{Duration: time.Duration(q.Grace.ms) * time.Millisecond, Amount: q.Grace.Amount}
	}
	return r
}

// GroupStatus is one group's state under a per_group quota.
type GroupStatus struct {
	// Group is the group as an object of its group_by values (null for a
	// missing property).
	Group     json.RawMessage `json:"group"`
	Used      *big.Int        `json:"used"`
	Remaining *big.Int        `json:"remaining"`
	State     quota.State     `json:"state"`
}

// MaxQuotaGroups is how many groups of a per_group quota Quotas shows.
const MaxQuotaGroups = 20

// quotaRow is a quota in force with its meter's definition.
type quotaRow = planQuota

// PlanInForce is the plan whose quotas GET /v1/quotas shows: its name
// ("" for none), version, and where it came from ("admin", "stripe",
// "migration", or "default" for the configured default plan).
type PlanInForce struct {
	Plan    string `json:"plan"`
	Version int    `json:"plan_version,omitzero"`
	Source  string `json:"plan_source,omitempty"`
}

// WithDefaultPlan returns r with the default plan that limits tenants
// without a plan assignment in force ("" for none).
func (r *Reader) WithDefaultPlan(plan string) *Reader {
	c := *r
	c.defaultPlan = plan
	return &c
}

// DefaultPlan is the default plan r was given ("" for none).
func (r *Reader) DefaultPlan() string { return r.defaultPlan }

// Quotas returns tenant's plan and the state of each of its quotas in the
// period containing now (see QuotasInForce).
func (r *Reader) Quotas(ctx context.Context, tenant string, now time.Time) (string, []QuotaStatus, error) {
	p, qs, err := r.QuotasInForce(ctx, tenant, now)
	return p.Plan, qs, err
}

// QuotasInForce returns the plan in force for tenant at now and the
// state of each quota in force over the period containing now (package
// planperiod: the versions in force during the period, with the latest
// version's proration policy), ordered by metric, meter (the implicit
// meter first), filter and per_group. A tenant without an assignment in
// force has the default plan's quotas. A quota on a meter no longer
// defined shows no usage.
func (r *Reader) QuotasInForce(ctx context.Context, tenant string, now time.Time) (PlanInForce, []QuotaStatus, error) {
	var exists bool
	err := r.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant = $1)`, tenant).Scan(&exists)
	if err != nil {
		return PlanInForce{}, nil, fmt.Errorf("reading tenant %s: %w", tenant, err)
	}
	if !exists {
		return PlanInForce{}, nil, ErrUnknownTenant
	}
	sched, err := accounts.TenantSchedule(ctx, r.q, tenant)
	if err != nil {
		return PlanInForce{}, nil, err
	}
	from, to := windows.Month.SpanIn(sched, now)
	inputs, err := readPlanInputs(ctx, r.q, []string{tenant}, from, to, r.defaultPlan)
	if err != nil {
		return PlanInForce{}, nil, fmt.Errorf("reading quotas of %s: %w", tenant, err)
	}
	var p PlanInForce
	var qrs []quotaRow
	var keys []planperiod.Key
	for _, g := range quotaGranularities {
		start, end := g.SpanIn(sched, now)
		res, err := planperiod.Evaluate(inputs[tenant], start, end, now)
		if err != nil {
			return PlanInForce{}, nil, fmt.Errorf("reading quotas of %s: %w", tenant, err)
		}
		p = PlanInForce{Plan: res.Plan, Version: res.Version, Source: res.Source}
		for _, pq := range res.Quotas {
			if pq.Key.Period != string(g) {
				continue
			}
			qr := pq.Data.(planQuota)
			qr.status.Limit = pq.Limit
			qrs, keys = append(qrs, qr), append(keys, pq.Key)
		}
	}
	// By key, as the old read ordered the plan's rows.
	idx := make([]int, len(qrs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return compareKeys(keys[a], keys[b]) })
	qs := make([]QuotaStatus, len(qrs))
	for i, j := range idx {
		if qs[i], err = r.quotaStatus(ctx, tenant, sched, qrs[j], now); err != nil {
			return PlanInForce{}, nil, err
		}
	}
	return p, qs, nil
}

// compareKeys orders quotas by metric, meter (the implicit meter first),
// filter and per_group, then period.
func compareKeys(a, b planperiod.Key) int {
	return cmp.Or(cmp.Compare(a.Metric, b.Metric), cmp.Compare(a.Meter, b.Meter), cmp.Compare(a.Filter, b.Filter),
		cmp.Compare(boolInt(a.PerGroup), boolInt(b.PerGroup)), cmp.Compare(a.Period, b.Period))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// quotaStatus reads the usage of one quota in the period containing now
// (a month quota's: the tenant's billing period in sched).
func (r *Reader) quotaStatus(ctx context.Context, tenant string, sched billingcycle.Schedule, qr quotaRow, now time.Time) (QuotaStatus, error) {
	q := qr.status
	q.PeriodStart, q.PeriodEnd = qr.period.SpanIn(sched, now)
	rule := q.rule()
	var err error
	switch {
	case q.Meter == q.Metric:
		q.Used, err = GroupValue(ctx, r.q, tenant, q.Meter, "", qr.period, q.PeriodStart)
	case qr.aggregation == "":
		q.Used = new(big.Int)
	case q.PerGroup:
		q.Used = new(big.Int)
		q.Groups, q.GroupsTotal, err = r.topGroups(ctx, tenant, qr, q.PeriodStart, rule)
		if len(q.Groups) > 0 {
			q.Used = q.Groups[0].Used
		}
	default:
		q.Used, err = MeterValue(ctx, r.q, tenant, q.Meter, meter.Aggregation(qr.aggregation), qr.groupBy, q.Filter, qr.period, q.PeriodStart)
	}
	if err != nil {
		return q, fmt.Errorf("reading quotas of %s: %w", tenant, err)
	}
	q.State, q.Remaining = rule.Evaluate(q.Used), remaining(q.Limit, q.Used)
	if err := r.applyCredits(ctx, tenant, qr, &q, rule, now); err != nil {
		return q, fmt.Errorf("reading quotas of %s: %w", tenant, err)
	}
	if q.Grace != nil && q.Limit != nil && !q.PerGroup {
		if err := r.applyGrace(ctx, tenant, &q, rule, now); err != nil {
			return q, fmt.Errorf("reading quotas of %s: %w", tenant, err)
		}
	}
	return q, nil
}

// topGroups reads the MaxQuotaGroups groups of qr's meter with the most
// usage in the period starting at start, and how many groups it has.
func (r *Reader) topGroups(ctx context.Context, tenant string, qr quotaRow, start time.Time, rule quota.Rule) ([]GroupStatus, int, error) {
	rows, err := r.q.Query(ctx, `SELECT coalesce(k.group_key, w.group_key), w.value, count(*) OVER ()
		FROM usage_windows w
		LEFT JOIN meter_group_keys k ON k.meter = w.meter AND k.digest = w.group_key
		WHERE w.tenant = $1 AND w.meter = $2 AND w.granularity = $3 AND w.window_start = $4 AND `+meterPeriodIndexed+`
		ORDER BY w.value DESC, w.group_key LIMIT $5`, tenant, qr.status.Meter, string(qr.period), start, MaxQuotaGroups)
	if err != nil {
		return nil, 0, err
	}
	groups := []GroupStatus{}
	total := 0
	for rows.Next() {
		var key string
		var used pgtype.Numeric
		if err := rows.Scan(&key, &used, &total); err != nil {
			rows.Close()
			return nil, 0, err
		}
		g := GroupStatus{Used: NumericInt(used), Group: json.RawMessage("null")}
		// A key of another definition of the meter (its group_by changed)
		// shows as a null group.
		if parsed, err := meter.ParseGroupKey(qr.groupBy, key); err == nil {
			g.Group, _ = parsed.MarshalJSON() // never fails
		}
		g.State, g.Remaining = rule.Evaluate(g.Used), remaining(rule.Limit, g.Used)
		groups = append(groups, g)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	return groups, total, nil
}

// remaining is what limit leaves of used, never below 0; nil when
// unlimited.
func remaining(limit *int64, used *big.Int) *big.Int {
	if limit == nil {
		return nil
	}
	r := new(big.Int).Sub(big.NewInt(*limit), used)
	if r.Sign() < 0 {
		r.SetInt64(0)
	}
	return r
}

// NumericInt converts an integer-valued Postgres numeric (NULL is 0) to a big.Int.
func NumericInt(n pgtype.Numeric) *big.Int {
	if !n.Valid || n.Int == nil {
		return new(big.Int)
	}
	v := new(big.Int).Set(n.Int)
	if n.Exp > 0 {
		v.Mul(v, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n.Exp)), nil))
	} else if n.Exp < 0 {
		v.Quo(v, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(-n.Exp)), nil))
	}
	return v
}

// applyGrace judges q's usage with its grace: the time of the period's
// exceeded breach (read when the grace is by time) and now decide
// whether the grace has run out; q.Grace shows when or at what usage it
// ends.
func (r *Reader) applyGrace(ctx context.Context, tenant string, q *QuotaStatus, rule quota.Rule, now time.Time) error {
	var since time.Time
	if rule.Grace.Duration > 0 {
		at, err := ExceededSince(ctx, r.q, tenant, q.Meter, groupKeyOf(q.Filter), q.PeriodStart)
		if err != nil {
			return err
		}
		since = at
	}
	limit := big.NewInt(*q.Limit)
	if q.Allowance != nil {
		limit = q.Allowance
	}
	a := rule.Assess(limit, q.Used, since, now)
	q.State = a.State
	g := *q.Grace
	g.Active, g.EndsAbove = a.InGrace, a.GraceEndsAbove
	if !a.GraceEndsAt.IsZero() {
		t := a.GraceEndsAt.UTC()
		g.EndsAt = &t
	}
	q.Grace = &g
	return nil
}

// groupKeyOf is the breach group key of a quota with filter: the filter
// as a JSON object with sorted keys, "" for none.
func groupKeyOf(filter map[string]string) string {
	if len(filter) == 0 {
		return ""
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(filter) // a map of strings always encodes, keys sorted
	return string(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
}
