package rollup

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

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

// rule is a limited quota of a tenant's metric, with its period.
type rule = usagedata.QuotaRule

// evaluateQuotas checks every (tenant, metric, period) the batch touched
// and records each threshold crossed for the first time.
func evaluateQuotas(ctx context.Context, tx pgx.Tx, incs []increment, now time.Time) ([]quota.Breach, error) {
	if len(incs) == 0 {
		return nil, nil
	}
	rules, err := quotaRules(ctx, tx, incs)
	if err != nil || len(rules) == 0 {
		return nil, err
	}
	touched := map[periodKey]bool{}
	for _, in := range incs {
		r, ok := rules[[2]string{in.tenant, in.metric}]
		if !ok {
			continue
		}
		touched[periodKey{in.tenant, in.metric, r.Period.Start(in.at)}] = true
	}
	var breaches []quota.Breach
	for pk := range touched {
		if breaches, err = recordBreaches(ctx, tx, pk, rules[[2]string{pk.tenant, pk.metric}], now, breaches); err != nil {
			return nil, err
		}
	}
	sortBreaches(breaches)
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

// quotaRules reads the limited quotas of the tenants incs touch, by
// (tenant, metric).
func quotaRules(ctx context.Context, tx pgx.Tx, incs []increment) (map[[2]string]rule, error) {
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

// recordBreaches reads the usage of period pk, records every threshold of
// r it has reached, and appends to breaches those recorded for the first
// time.
func recordBreaches(ctx context.Context, tx pgx.Tx, pk periodKey, r rule, now time.Time, breaches []quota.Breach) ([]quota.Breach, error) {
	value, err := usagedata.WindowValue(ctx, tx, pk.tenant, pk.metric, r.Period, pk.start)
	if err != nil {
		return nil, err
	}
	for _, th := range quota.Reached(r.Evaluate(value)) {
		b := quota.Breach{
			BreachID: quota.BreachID(pk.tenant, pk.metric, pk.start, string(th)), Tenant: pk.tenant, Metric: pk.metric,
			PeriodStart: pk.start, PeriodEnd: r.Period.End(pk.start), Limit: *r.Limit, Value: value,
			Threshold: string(th), DetectedAt: now,
		}
		recorded, err := usagedata.RecordBreach(ctx, tx, b)
		if err != nil {
			return nil, err
		}
		if recorded {
			breaches = append(breaches, b)
		}
	}
	return breaches, nil
}

// sortBreaches puts breaches in the order consumers see a tenant's
// breaches: the order usage crossed them, per tenant, metric and period,
// warning before exceeded before blocked.
func sortBreaches(breaches []quota.Breach) {
	rank := quota.Reached(quota.Blocked) // lowest first
	slices.SortFunc(breaches, func(x, y quota.Breach) int {
		if c := compareStrings(x.Tenant, y.Tenant); c != 0 {
			return c
		}
		if c := compareStrings(x.Metric, y.Metric); c != 0 {
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
