package rollup

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage/outbox"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/usage"
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
	keys, payloads, hkeys, hvals := make([][]byte, n), make([][]byte, n), make([]string, n), make([]string, n)
	for i, d := range dead {
		tenant := d.ev.Tenant
		if tenant == "" {
			tenant = string(d.rec.Key)
		}
		tenants[i], errs[i], classes[i], parts[i], offs[i] = Sanitize(tenant), Sanitize(d.err), d.class, int32(d.rec.Partition), d.rec.Offset
		keys[i], payloads[i] = d.rec.Key, d.rec.Value
		hkeys[i], hvals[i] = byteaArray(d.rec.Headers, func(h Header) []byte { return []byte(h.Key) }),
			byteaArray(d.rec.Headers, func(h Header) []byte { return h.Value })
	}
	// Headers travel as text literals of bytea arrays (all hex), since a
	// batch's headers are arrays of arrays of unequal lengths.
	if _, err := tx.Exec(ctx, `INSERT INTO usage_dlq (tenant, error, error_class, source_topic, source_partition, source_offset,
			msg_key, payload, header_keys, header_values, failed_at)
		SELECT t, e, c, $10, p, o, k, v, hk::bytea[], hv::bytea[], $11
		FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bytea[], $7::bytea[], $8::text[], $9::text[])
			AS b(t, e, c, p, o, k, v, hk, hv)
		ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING`,
		tenants, errs, classes, parts, offs, keys, payloads, hkeys, hvals, a.cfg.Topic, now); err != nil {
		return fmt.Errorf("recording dead letters: %w", err)
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

// byteaArray writes one field of each header as a Postgres bytea[] literal
// of hex strings, such as {"\\x6b6579"}: plain ASCII whatever the bytes.
func byteaArray(hs []Header, field func(Header) []byte) string {
	b := []byte{'{'}
	for i, h := range hs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `"\\x`...)
		b = hex.AppendEncode(b, field(h))
		b = append(b, '"')
	}
	return string(append(b, '}'))
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
		if _, err := tx.Exec(ctx, `INSERT INTO usage_corrections (tenant, metric, period_start, value, events, reason)
			VALUES ($1, $2, $3, $4::numeric, $5, 'period_closed')`, k.tenant, k.metric, k.period, late[k].value.String(), late[k].events); err != nil {
			return fmt.Errorf("recording a correction: %w", err)
		}
	}
	return nil
}

type rule struct {
	quota.Rule
	period windows.Granularity
}

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
		touched[periodKey{in.tenant, in.metric, r.period.Start(in.at)}] = true
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
	rows, err := tx.Query(ctx, `SELECT t.tenant, q.metric, q.quota_limit, q.period, q.burst_percent, q.hard
		FROM tenants t JOIN plan_quotas q ON q.plan = t.plan
		WHERE t.tenant = ANY($1) AND q.quota_limit IS NOT NULL`, tenantList)
	if err != nil {
		return nil, fmt.Errorf("reading quotas: %w", err)
	}
	rules := map[[2]string]rule{}
	for rows.Next() {
		var tenant, metric, period string
		var r rule
		if err := rows.Scan(&tenant, &metric, &r.Limit, &period, &r.BurstPercent, &r.Hard); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading quotas: %w", err)
		}
		r.period = windows.Granularity(period)
		rules[[2]string{tenant, metric}] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading quotas: %w", err)
	}
	return rules, nil
}

// recordBreaches reads the usage of period pk, records every threshold of
// r it has reached, and appends to breaches those recorded for the first
// time.
func recordBreaches(ctx context.Context, tx pgx.Tx, pk periodKey, r rule, now time.Time, breaches []quota.Breach) ([]quota.Breach, error) {
	var used pgtype.Numeric
	if err := tx.QueryRow(ctx, `SELECT value FROM usage_windows
			WHERE tenant = $1 AND metric = $2 AND granularity = $3 AND window_start = $4`,
		pk.tenant, pk.metric, string(r.period), pk.start).Scan(&used); err != nil {
		return nil, fmt.Errorf("reading usage of %s/%s: %w", pk.tenant, pk.metric, err)
	}
	value := usage.NumericInt(used)
	for _, th := range quota.Reached(r.Evaluate(value)) {
		b := quota.Breach{
			BreachID: quota.BreachID(pk.tenant, pk.metric, pk.start, string(th)), Tenant: pk.tenant, Metric: pk.metric,
			PeriodStart: pk.start, PeriodEnd: r.period.End(pk.start), Limit: *r.Limit, Value: value,
			Threshold: string(th), DetectedAt: now,
		}
		tag, err := tx.Exec(ctx, `INSERT INTO quota_breaches (breach_id, tenant, metric, period_start, period_end, threshold, quota_limit, value, detected_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9) ON CONFLICT DO NOTHING`,
			b.BreachID, b.Tenant, b.Metric, b.PeriodStart, b.PeriodEnd, b.Threshold, b.Limit, b.Value.String(), b.DetectedAt)
		if err != nil {
			return nil, fmt.Errorf("recording breach: %w", err)
		}
		if tag.RowsAffected() == 1 {
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

// sortWindows orders the parallel window slices by (tenant, metric,
// granularity, start) so that concurrent transactions lock rows in one
// order and cannot deadlock.
func sortWindows(tenants, metrics, grans []string, starts []time.Time, vals []string, counts []int64) {
	idx := make([]int, len(tenants))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(x, y int) int {
		if c := compareStrings(tenants[x], tenants[y]); c != 0 {
			return c
		}
		if c := compareStrings(metrics[x], metrics[y]); c != 0 {
			return c
		}
		if c := compareStrings(grans[x], grans[y]); c != 0 {
			return c
		}
		return starts[x].Compare(starts[y])
	})
	permute := func(apply func(dst, src int)) {
		for dst, src := range idx {
			apply(dst, src)
		}
	}
	t, m, g, s, v, c := slices.Clone(tenants), slices.Clone(metrics), slices.Clone(grans), slices.Clone(starts), slices.Clone(vals), slices.Clone(counts)
	permute(func(dst, src int) {
		tenants[dst], metrics[dst], grans[dst], starts[dst], vals[dst], counts[dst] = t[src], m[src], g[src], s[src], v[src], c[src]
	})
}
