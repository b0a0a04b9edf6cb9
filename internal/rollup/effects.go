package rollup

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/meterset"
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
	}
	res.DeadLettered += n
	return outbox.Enqueue(ctx, tx, msgs...)
}

// corrections records usage counted into a billing month that had
// already ended when it arrived (a late event, or the raise of a counted
// event), for the biller to reconcile.
func corrections(ctx context.Context, tx pgx.Tx, incs []increment, now time.Time, res *Result) error {
	type key struct {
		tenant, metric string
		period         time.Time
	}
	late := map[key]*amount{}
	var order []key
	for _, in := range incs {
		start, end := windows.Month.Span(in.at)
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
func evaluateQuotas(ctx context.Context, tx pgx.Tx, incs []increment, now time.Time) ([]quota.Breach, error) {
	return evaluateMeterQuotas(ctx, tx, nil, incs, now)
}

// evaluateMeterQuotas checks every quota period the batch touched and
// records each threshold crossed for the first time: a quota on a
// metric's implicit meter per (tenant, metric, period), as before meters
// existed; a quota on a defined meter per (tenant, quota, period) for a
// filter quota whose groups the batch counted in, and per (tenant, quota,
// period, group) for a per_group quota. meters are the definitions the
// batch counted with (nil: none).
func evaluateMeterQuotas(ctx context.Context, tx pgx.Tx, meters *meterset.Set, incs []increment, now time.Time) ([]quota.Breach, error) {
	if len(incs) == 0 {
		return nil, nil
	}
	rules, err := quotaRules(ctx, tx, incs)
	if err != nil || len(rules) == 0 {
		return nil, err
	}
	book, err := readCredits(ctx, tx, rules, incs) // grants.go
	if err != nil {
		return nil, err
	}
	implicit := map[[2]string]rule{}
	onMeter := map[[2]string][]int{} // (tenant, meter) → indexes in rules
	for i, r := range rules {
		if r.Implicit() {
			implicit[[2]string{r.Tenant, r.Metric}] = r
		} else {
			k := [2]string{r.Tenant, r.Meter}
			onMeter[k] = append(onMeter[k], i)
		}
	}
	touched := map[periodKey]bool{}
	groups := map[meterPeriodKey]meter.Group{}
	var key []byte
	for _, in := range incs {
		if r, ok := implicit[[2]string{in.tenant, in.metric}]; ok {
			touched[periodKey{in.tenant, in.metric, r.Period.Start(in.at)}] = true
		}
		if in.ev == nil || len(onMeter) == 0 || meters == nil {
			continue
		}
		for _, m := range meters.ForMetric(in.metric) {
			idx := onMeter[[2]string{in.tenant, m.Name}]
			if len(idx) == 0 || !m.Matches(*in.ev) {
				continue
			}
			g := m.Group(*in.ev)
			for _, i := range idx {
				r := rules[i]
				switch {
				case r.Metric != m.Metric:
					continue
				case r.PerGroup:
					key = g.AppendKey(key[:0])
					groups[meterPeriodKey{i, r.Period.Start(in.at), string(key)}] = g
				case groupMatches(g, r.Filter):
					groups[meterPeriodKey{i, r.Period.Start(in.at), ""}] = meter.Group{}
				}
			}
		}
	}
	// Every threshold reached, then recorded in one statement: those
	// recorded now for the first time are this batch's breaches.
	var reached []quota.Breach
	for pk := range touched {
		if reached, err = implicitBreaches(ctx, tx, book, pk, implicit[[2]string{pk.tenant, pk.metric}], now, reached); err != nil {
			return nil, err
		}
	}
	if reached, err = meterBreaches(ctx, tx, book, meters, rules, groups, now, reached); err != nil {
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
	return breaches, outbox.Enqueue(ctx, tx, msgs...)
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

// quotaRules reads the limited quotas of the tenants incs touch.
func quotaRules(ctx context.Context, tx pgx.Tx, incs []increment) ([]rule, error) {
	tenantSet := map[string]bool{}
	for _, in := range incs {
		tenantSet[in.tenant] = true
	}
	tenantList := make([]string, 0, len(tenantSet))
	for t := range tenantSet {
		tenantList = append(tenantList, t)
	}
	return usagedata.QuotaRules(ctx, tx, tenantList)
}

// implicitBreaches reads the usage of period pk and appends to reached a
// breach for every threshold of r it has reached.
func implicitBreaches(ctx context.Context, tx pgx.Tx, book *creditBook, pk periodKey, r rule, now time.Time, reached []quota.Breach) ([]quota.Breach, error) {
	value, err := usagedata.WindowValue(ctx, tx, pk.tenant, pk.metric, r.Period, pk.start)
	if err != nil {
		return nil, err
	}
	ev, err := book.evaluate(ctx, tx, nil, r, pk.start, value, now)
	if err != nil {
		return nil, err
	}
	for _, th := range quota.Reached(ev.state) {
		reached = append(reached, quota.Breach{
			BreachID: quota.BreachID(pk.tenant, pk.metric, pk.start, string(th)), Tenant: pk.tenant, Metric: pk.metric,
			Meter: pk.metric, Group: quota.WholeMeter,
			PeriodStart: pk.start, PeriodEnd: r.Period.End(pk.start), Limit: ev.limit, Value: value,
			Threshold: string(th), DetectedAt: now,
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
func meterBreaches(ctx context.Context, tx pgx.Tx, book *creditBook, meters *meterset.Set, rules []rule, groups map[meterPeriodKey]meter.Group,
	now time.Time, reached []quota.Breach) ([]quota.Breach, error) {
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
		ev, err := book.evaluate(ctx, tx, meters, r, mk.start, value, now)
		if err != nil {
			return nil, err
		}
		group, groupKey := filterJSON(r.Filter)
		reached = appendReached(reached, r, mk, groupKey, group, value, ev, now)
	}
	values, err := usagedata.GroupValues(ctx, tx, windowsOf)
	if err != nil {
		return nil, err
	}
	for i, mk := range perGroup {
		group, _ := groups[mk].MarshalJSON() // never fails
		reached = appendReached(reached, rules[mk.rule], mk, mk.group, group, values[i], planEvaluation(rules[mk.rule], values[i]), now)
	}
	return reached, nil
}

// appendReached appends to reached a breach of quota r on its meter for
// every threshold value reaches in period mk, as ev judged it (against
// the plan's limit, or the allowance credit grants raise it to).
func appendReached(reached []quota.Breach, r rule, mk meterPeriodKey, groupKey string, group json.RawMessage, value *big.Int, ev evaluation, now time.Time) []quota.Breach {
	for _, th := range quota.Reached(ev.state) {
		reached = append(reached, quota.Breach{
			BreachID: quota.MeterBreachID(r.Tenant, r.Meter, groupKey, mk.start, string(th)), Tenant: r.Tenant, Metric: r.Metric,
			Meter: r.Meter, Group: group, GroupKey: groupKey,
			PeriodStart: mk.start, PeriodEnd: r.Period.End(mk.start), Limit: ev.limit, Value: value,
			Threshold: string(th), DetectedAt: now,
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
		return slices.Index(rank, quota.State(x.Threshold)) - slices.Index(rank, quota.State(y.Threshold))
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
