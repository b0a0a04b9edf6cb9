package rollup

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/meterset"
	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage/deadletters"
	"github.com/usagemeter/metering/internal/storage/outbox"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// deadLetters records undecodable, invalid and too-old records and queues
// them for usage.events.dlq with the reason headers. The raw key, value
// and headers go to bytea columns byte for byte; only sanitised text goes
// to text columns, so no record can fail the insert.
func (a *Aggregator) deadLetters(ctx context.Context, tx pgx.Tx, batch []decoded, now time.Time, res *Result) error {
	var dead []*decoded
	for i := range batch {
		if batch[i].class != "" {
			dead = append(dead, &batch[i])
		}
	}
	if len(dead) == 0 {
		return nil
	}
	n := len(dead)
	tenants, errs, classes := make([]string, n), make([]string, n), make([]string, n)
	parts, offs := make([]int32, n), make([]int64, n)
	keys, payloads, headers := make([][]byte, n), make([][]byte, n), make([][]Header, n)
	for i, d := range dead {
		tenant := d.ev.Tenant
		if tenant == "" {
			tenant = string(d.rec.Key)
		}
		tenants[i], errs[i], classes[i], parts[i], offs[i] = Sanitize(tenant), Sanitize(d.err), d.class, int32(d.rec.Partition), d.rec.Offset
		keys[i], payloads[i], headers[i] = d.rec.Key, d.rec.Value, d.rec.Headers
	}
	if err := deadletters.RecordUsage(ctx, tx, a.cfg.Topic, &deadletters.UsageLetters{
		Tenants: tenants, Errors: errs, Classes: classes, Partitions: parts, Offsets: offs, Keys: keys, Payloads: payloads, Headers: headers,
	}, now); err != nil {
		return err
	}
	msgs := make([]outbox.Message, n)
	for i, d := range dead {
		a.cfg.Logger.WarnContext(ctx, "dead letter", "class", d.class, "error", errs[i], "partition", d.rec.Partition, "offset", d.rec.Offset)
		// A tombstone (nil value) goes out empty.
		msgs[i] = outbox.Message{Topic: topics.UsageEventsDLQ, Key: d.rec.Key, Value: d.rec.Value, Headers: map[string]string{
			"error": errs[i], "error-class": d.class, "source-topic": a.cfg.Topic,
			"source-partition": strconv.Itoa(d.rec.Partition), "source-offset": strconv.FormatInt(d.rec.Offset, 10),
			"failed-at": now.Format(time.RFC3339Nano),
		}}
		// An adjustment keeps its kind on the dead-letter topic too.
		if isAdjustment(d.rec) {
			msgs[i].Headers[HeaderKind] = KindAdjustment
		}
	}
	res.DeadLettered += n
	return outbox.Enqueue(ctx, tx, msgs...)
}

// corrections records usage counted into a billing period (the tenant's,
// in periods) that had already ended when it arrived (a late event, or
// the raise of a counted event), for the biller to reconcile.
func corrections(ctx context.Context, tx pgx.Tx, periods billingcycle.Schedules, incs []increment, now time.Time, res *Result) error {
	type key struct {
		tenant, metric string
		period         time.Time
	}
	late := map[key]*amount{}
	var order []key
	for _, in := range incs {
		start, end := periods.Span(in.tenant, in.at)
		if end.After(now) {
			continue
		}
		res.Late++
		k := key{in.tenant, in.metric, start}
		if late[k] == nil {
			late[k] = &amount{}
			order = append(order, k)
		}
		late[k].value.add(in.value)
		late[k].events += in.events
	}
	for _, k := range order {
		if err := usagedata.RecordLateUsage(ctx, tx, k.tenant, k.metric, k.period, late[k].value.String(), late[k].events); err != nil {
			return err
		}
	}
	return nil
}

// rule is a limited quota of a tenant's plan, with its period.
type rule = usagedata.QuotaRule

// evaluateQuotas evaluates the quotas of usage counted in implicit meters
// only (increments without an event, such as a held conflict an operator
// counted): see evaluateMeterQuotas.
func evaluateQuotas(ctx context.Context, tx pgx.Tx, periods billingcycle.Schedules, incs []increment, now time.Time, defaultPlan string) ([]quota.Breach, error) {
	return evaluateMeterQuotas(ctx, tx, nil, periods, incs, now, defaultPlan)
}

// evaluateMeterQuotas checks every quota period the batch touched and
// records each threshold crossed for the first time: a quota on a
// metric's implicit meter per (tenant, metric, period), as before meters
// existed; a quota on a defined meter per (tenant, quota, period) for a
// filter quota whose groups the batch counted in, and per (tenant, quota,
// period, group) for a per_group quota. The quotas of a period are those
// in force over it (usagedata.PlanRules: the plan versions and
// assignments of the period, defaultPlan for a tenant without one).
// meters are the definitions the batch counted with (nil: none); a month
// period is the tenant's billing period in periods. Then it evaluates the
// spend thresholds of the tenants' plans (evaluateSpend).
func evaluateMeterQuotas(ctx context.Context, tx pgx.Tx, meters *meterset.Set, periods billingcycle.Schedules, incs []increment, now time.Time, defaultPlan string) ([]quota.Breach, error) {
	if len(incs) == 0 {
		return nil, nil
	}
	plans, err := quotaRules(ctx, tx, periods, incs, now, defaultPlan)
	if err != nil {
		return nil, err
	}
	// rules are every rule of the periods the batch touched; ruleAt finds
	// the indexes of a tenant's rules in force at an instant.
	var rules []rule
	seen := map[string]int{} // ruleIdentity → index in rules
	type periodOf struct {
		tenant     string
		day, month time.Time
	}
	byDay := map[periodOf][]int{}
	ruleAt := func(tenant string, at time.Time) []int {
		// A billing period may start inside a day: the rules are those
		// of the day and of the billing period.
		k := periodOf{tenant, windows.Day.Start(at), periods.Of(tenant).Start(at)}
		idx, ok := byDay[k]
		if !ok {
			for _, r := range plans.At(tenant, at) {
				id := ruleIdentity(r)
				i, ok := seen[id]
				if !ok {
					i = len(rules)
					seen[id] = i
					rules = append(rules, r)
				}
				idx = append(idx, i)
			}
			byDay[k] = idx
		}
		return idx
	}
	touched := map[periodKey]int{}
	groups := map[meterPeriodKey]meter.Group{}
	var key []byte
	for _, in := range incs {
		sched := periods.Of(in.tenant)
		for _, i := range ruleAt(in.tenant, in.at) {
			r := rules[i]
			if r.Metric != in.metric {
				continue
			}
			if r.Implicit() {
				touched[periodKey{in.tenant, in.metric, r.Period.StartIn(sched, in.at)}] = i
				continue
			}
			if in.ev == nil || meters == nil {
				continue
			}
			m, ok := meters.Named(r.Meter)
			if !ok || m.Metric != in.metric || !m.Matches(*in.ev) {
				continue
			}
			g := m.Group(*in.ev)
			switch {
			case r.PerGroup:
				key = g.AppendKey(key[:0])
				groups[meterPeriodKey{i, r.Period.StartIn(sched, in.at), string(key)}] = g
			case groupMatches(g, r.Filter):
				groups[meterPeriodKey{i, r.Period.StartIn(sched, in.at), ""}] = meter.Group{}
			}
		}
	}
	// Every threshold reached, then recorded in one statement: those
	// recorded now for the first time are this batch's breaches.
	var reached []quota.Breach
	// The credit grants of the batch's tenants with a quota they raise,
	// read once (grants.go).
	book, err := readCredits(ctx, tx, periods, rules, incs)
	if err != nil {
		return nil, err
	}
	overages := overagePrices{}
	for pk, i := range touched {
		before := len(reached)
		if reached, err = implicitBreaches(ctx, tx, book, periods.Of(pk.tenant), pk, rules[i], now, reached); err != nil {
			return nil, err
		}
		overages.note(reached[before:], rules[i])
	}
	if reached, err = meterBreaches(ctx, tx, book, meters, periods, rules, groups, now, reached, overages); err != nil {
		return nil, err
	}
	sortBreaches(reached)
	recorded, err := usagedata.RecordBreaches(ctx, tx, reached)
	if err != nil {
		return nil, err
	}
	var breaches []quota.Breach
	for i, b := range reached {
		if recorded[i] {
			breaches = append(breaches, b)
		}
	}
	msgs := make([]outbox.Message, len(breaches))
	for i, b := range breaches {
		v, err := json.Marshal(b)
		if err != nil {
			return nil, fmt.Errorf("encoding breach: %w", err)
		}
		msgs[i] = outbox.Message{Topic: topics.QuotaBreaches, Key: []byte(b.Tenant), Value: v, Headers: map[string]string{"breach-id": b.BreachID}}
	}
	if err := outbox.Enqueue(ctx, tx, msgs...); err != nil {
		return nil, err
	}
	if err := overageStarted(ctx, tx, breaches, overages); err != nil {
		return nil, err
	}
	// Spend thresholds, after the windows and quotas: only tenants whose
	// plan has some run a projection (spend.go).
	return breaches, evaluateSpend(ctx, tx, plans, periods, incs, now, defaultPlan)
}

// overagePrices holds the overage price of the quota of each breach
// reached that has one, by breach id.
type overagePrices map[string]json.RawMessage

// note records r's overage price for the breaches bs of r.
func (o overagePrices) note(bs []quota.Breach, r rule) {
	if len(r.OveragePrice) == 0 {
		return
	}
	for _, b := range bs {
		o[b.BreachID] = r.OveragePrice
	}
}

// overageStarted queues overage.started on billing.events, in the
// batch's transaction, for each breach of breaches (those recorded now
// for the first time) that is the exceeded threshold: the first time the
// quota's usage passed its allowance in the period, so once per quota,
// group and period.
func overageStarted(ctx context.Context, tx pgx.Tx, breaches []quota.Breach, overages overagePrices) error {
	var evs []billingevents.Event
	for _, b := range breaches {
		if b.Threshold != string(quota.Exceeded) {
			continue
		}
		data := billingevents.OverageStarted{Meter: cmp.Or(b.Meter, b.Metric), Group: b.GroupKey, PeriodStart: b.PeriodStart, PeriodEnd: b.PeriodEnd,
			Included: big.NewInt(b.Limit), Usage: new(big.Int).Set(b.Value), StartedAt: b.DetectedAt}
		if raw := overages[b.BreachID]; len(raw) > 0 {
			var p price.Price
			if err := json.Unmarshal(raw, &p); err != nil {
				return fmt.Errorf("reading the overage price of %s's quota on %s: %w", b.Tenant, data.Meter, err)
			}
			data.OveragePrice = &p
		}
		ev, err := billingevents.New(b.Tenant, b.DetectedAt, data)
		if err != nil {
			return err
		}
		evs = append(evs, ev)
	}
	return billingevents.Enqueue(ctx, tx, evs...)
}

// periodKey is one quota period of a tenant's metric.
type periodKey struct {
	tenant, metric string
	start          time.Time
}

// meterPeriodKey is one period of a quota on a defined meter (rule, an
// index in the rules read), and for a per_group quota one group's key.
type meterPeriodKey struct {
	rule  int
	start time.Time
	group string
}

// groupMatches reports whether g carries each property = value of filter
// (a missing property matches no value).
func groupMatches(g meter.Group, filter map[string]string) bool {
	for k, v := range filter {
		found := false
		for i := range g.Len() {
			if g.Name(i) == k {
				got, ok := g.Value(i)
				found = ok && got == v
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// quotaRules reads, in one statement, what decides the quotas of the
// tenants incs touch over the billing periods (and so the days) they
// touch.
func quotaRules(ctx context.Context, tx pgx.Tx, periods billingcycle.Schedules, incs []increment, now time.Time, defaultPlan string) (*usagedata.PlanRules, error) {
	tenantSet := map[string]bool{}
	from, to := periods.Span(incs[0].tenant, incs[0].at)
	for _, in := range incs {
		tenantSet[in.tenant] = true
		s, e := periods.Span(in.tenant, in.at)
		ds, de := windows.Day.Span(in.at)
		from, to = minTime(from, s, ds), maxTime(to, e, de)
	}
	tenantList := make([]string, 0, len(tenantSet))
	for t := range tenantSet {
		tenantList = append(tenantList, t)
	}
	return usagedata.QuotaRules(ctx, tx, tenantList, periods, from, to, defaultPlan, now)
}

// ruleIdentity is the same for two rules of a tenant that are one quota
// with the same limits (the periods they are read for may differ: the
// breaches' keys carry the period).
func ruleIdentity(r rule) string {
	_, filter := filterJSON(r.Filter)
	return fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%s\x00%t\x00%d\x00%d\x00%t\x00%v\x00%d\x00%v", r.Tenant, r.Period, r.Metric, r.Meter, filter, r.PerGroup, *r.Limit,
		r.BurstPercent, r.Hard, r.Thresholds, r.Grace.Duration, graceAmount(r.Grace))
}

// implicitBreaches reads the usage of period pk and appends to reached a
// breach for every threshold of r it has reached.
func implicitBreaches(ctx context.Context, tx pgx.Tx, book *creditBook, sched billingcycle.Schedule, pk periodKey, r rule, now time.Time, reached []quota.Breach) ([]quota.Breach, error) {
	value, err := usagedata.WindowValue(ctx, tx, pk.tenant, pk.metric, r.Period, pk.start)
	if err != nil {
		return nil, err
	}
	end := r.Period.EndIn(sched, pk.start)
	ev, err := book.evaluate(ctx, tx, nil, r, pk.start, end, value, now)
	if err != nil {
		return nil, err
	}
	if ev, err = withGrace(ctx, tx, r, ev, value, pk.metric, "", pk.start, now); err != nil {
		return nil, err
	}
	for _, l := range ev.a.Levels() {
		reached = append(reached, quota.Breach{
			BreachID: quota.BreachID(pk.tenant, pk.metric, pk.start, l.Name()), Tenant: pk.tenant, Metric: pk.metric,
			Meter: pk.metric, Group: quota.WholeMeter,
			PeriodStart: pk.start, PeriodEnd: end, Limit: ev.limit, Value: value,
			Threshold: string(l.Threshold), Percent: l.Percent, DetectedAt: now,
		})
	}
	return reached, nil
}

// meterBreaches reads the usage of the periods of quotas on defined meters
// in groups (per_group quotas' groups in one statement; a filter quota's
// value over the groups matching its filter) and appends to reached a
// breach for every threshold reached. A breach's group key is the group's
// key for a per_group quota, the filter as a JSON object with sorted keys
// for a filter quota ("" for none): per_group and filter breaches never
// share a key.
func meterBreaches(ctx context.Context, tx pgx.Tx, book *creditBook, meters *meterset.Set, periods billingcycle.Schedules, rules []rule, groups map[meterPeriodKey]meter.Group,
	now time.Time, reached []quota.Breach, overages overagePrices) ([]quota.Breach, error) {
	var perGroup []meterPeriodKey
	var windowsOf []usagedata.GroupWindow
	for mk := range groups {
		r := rules[mk.rule]
		m, ok := meters.Named(r.Meter)
		if !ok {
			continue
		}
		if r.PerGroup {
			perGroup = append(perGroup, mk)
			windowsOf = append(windowsOf, usagedata.GroupWindow{Tenant: r.Tenant, Meter: m.Name, GroupKey: mk.group, Granularity: r.Period, Start: mk.start})
			continue
		}
		value, err := usagedata.MeterValue(ctx, tx, r.Tenant, m.Name, m.Aggregation, m.GroupBy, r.Filter, r.Period, mk.start)
		if err != nil {
			return nil, err
		}
		end := r.Period.EndIn(periods.Of(r.Tenant), mk.start)
		ev, err := book.evaluate(ctx, tx, meters, r, mk.start, end, value, now)
		if err != nil {
			return nil, err
		}
		group, groupKey := filterJSON(r.Filter)
		if ev, err = withGrace(ctx, tx, r, ev, value, r.Meter, groupKey, mk.start, now); err != nil {
			return nil, err
		}
		before := len(reached)
		reached = appendReached(reached, r, mk, end, groupKey, group, value, ev, now)
		overages.note(reached[before:], r)
	}
	values, err := usagedata.GroupValues(ctx, tx, windowsOf)
	if err != nil {
		return nil, err
	}
	for i, mk := range perGroup {
		group, _ := groups[mk].MarshalJSON() // never fails
		before := len(reached)
		end := rules[mk.rule].Period.EndIn(periods.Of(rules[mk.rule].Tenant), mk.start)
		ev, err := withGrace(ctx, tx, rules[mk.rule], planEvaluation(rules[mk.rule], values[i]), values[i], rules[mk.rule].Meter, mk.group, mk.start, now)
		if err != nil {
			return nil, err
		}
		reached = appendReached(reached, rules[mk.rule], mk, end, mk.group, group, values[i], ev, now)
		overages.note(reached[before:], rules[mk.rule])
	}
	return reached, nil
}

// appendReached appends to reached a breach of quota r on its meter for
// every threshold value reaches in period mk, as ev judged it (against
// the plan's limit, or the allowance credit grants raise it to); the
// period ends at end.
func appendReached(reached []quota.Breach, r rule, mk meterPeriodKey, end time.Time, groupKey string, group json.RawMessage, value *big.Int, ev evaluation, now time.Time) []quota.Breach {
	for _, l := range ev.a.Levels() {
		reached = append(reached, quota.Breach{
			BreachID: quota.MeterBreachID(r.Tenant, r.Meter, groupKey, mk.start, l.Name()), Tenant: r.Tenant, Metric: r.Metric,
			Meter: r.Meter, Group: group, GroupKey: groupKey,
			PeriodStart: mk.start, PeriodEnd: end, Limit: ev.limit, Value: value,
			Threshold: string(l.Threshold), Percent: l.Percent, DetectedAt: now,
		})
	}
	return reached
}

// filterJSON returns a filter as a JSON object with sorted keys, and as a
// breach's group key: that object, or "" for no filter (a whole meter).
func filterJSON(filter map[string]string) (json.RawMessage, string) {
	if len(filter) == 0 {
		return quota.WholeMeter, ""
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(filter) // a map of strings always encodes, keys sorted
	obj := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	return obj, string(obj)
}

// sortBreaches puts breaches in the order consumers see a tenant's
// breaches: the order usage crossed them, per tenant, metric, meter, group
// and period, warning before exceeded before blocked.
func sortBreaches(breaches []quota.Breach) {
	rank := quota.Reached(quota.Blocked) // lowest first
	slices.SortFunc(breaches, func(x, y quota.Breach) int {
		if c := compareStrings(x.Tenant, y.Tenant); c != 0 {
			return c
		}
		if c := compareStrings(x.Metric, y.Metric); c != 0 {
			return c
		}
		if c := compareStrings(x.Meter, y.Meter); c != 0 {
			return c
		}
		if c := compareStrings(x.GroupKey, y.GroupKey); c != 0 {
			return c
		}
		if c := x.PeriodStart.Compare(y.PeriodStart); c != 0 {
			return c
		}
		if c := slices.Index(rank, quota.State(x.Threshold)) - slices.Index(rank, quota.State(y.Threshold)); c != 0 {
			return c
		}
		return x.Percent - y.Percent
	})
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// graceAmount is a grace's amount, -1 for none.
func graceAmount(g quota.Grace) int64 {
	if g.Amount == nil {
		return -1
	}
	return *g.Amount
}
