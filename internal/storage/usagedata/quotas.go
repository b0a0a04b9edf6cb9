package usagedata

import (
	"context"
	"fmt"

	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/windows"
)

// QuotaRule is one limited quota of a tenant's plan, the window
// granularity of its period, and what it limits: the implicit meter of
// Metric (Meter empty), or the defined meter Meter, over the groups
// matching Filter (every group when empty), or each group on its own
// (PerGroup).
type QuotaRule struct {
	quota.Rule
	Period         windows.Granularity
	Tenant, Metric string
	Meter          string
	Filter         map[string]string
	PerGroup       bool
}

// Implicit reports whether r limits its metric's implicit meter.
func (r QuotaRule) Implicit() bool { return r.Meter == "" }

// QuotaRules reads the limited quotas (those with a limit) of the plans
// of tenants, in the order of tenant, metric, meter (the implicit meter
// first), filter and per_group. Tenants without a plan have none.
func QuotaRules(ctx context.Context, q storage.Executor, tenants []string) ([]QuotaRule, error) {
	rows, err := q.Query(ctx, `SELECT t.tenant, q.metric, coalesce(q.meter, ''), q.group_filter, q.per_group,
			q.quota_limit, q.period, q.burst_percent, q.hard
		FROM tenants t JOIN plan_quotas q ON q.plan = t.plan
		WHERE t.tenant = ANY($1) AND q.quota_limit IS NOT NULL
		ORDER BY t.tenant, q.metric, q.meter NULLS FIRST, q.group_filter::text COLLATE "C", q.per_group`, tenants)
	if err != nil {
		return nil, fmt.Errorf("reading quotas: %w", err)
	}
	var rules []QuotaRule
	for rows.Next() {
		var period string
		var r QuotaRule
		if err := rows.Scan(&r.Tenant, &r.Metric, &r.Meter, &r.Filter, &r.PerGroup, &r.Limit, &period, &r.BurstPercent, &r.Hard); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading quotas: %w", err)
		}
		r.Period = windows.Granularity(period)
		rules = append(rules, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading quotas: %w", err)
	}
	return rules, nil
}
