package usagedata

import (
	"context"
	"fmt"

	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/windows"
)

// QuotaRule is one limited quota of a tenant's plan and the window
// granularity of its period.
type QuotaRule struct {
	quota.Rule
	Period windows.Granularity
}

// QuotaRules reads the limited quotas (those with a limit) of the plans
// of tenants, by (tenant, metric). Tenants without a plan have none.
func QuotaRules(ctx context.Context, q storage.Executor, tenants []string) (map[[2]string]QuotaRule, error) {
	rows, err := q.Query(ctx, `SELECT t.tenant, q.metric, q.quota_limit, q.period, q.burst_percent, q.hard
		FROM tenants t JOIN plan_quotas q ON q.plan = t.plan
		WHERE t.tenant = ANY($1) AND q.quota_limit IS NOT NULL`, tenants)
	if err != nil {
		return nil, fmt.Errorf("reading quotas: %w", err)
	}
	rules := map[[2]string]QuotaRule{}
	for rows.Next() {
		var tenant, metric, period string
		var r QuotaRule
		if err := rows.Scan(&tenant, &metric, &r.Limit, &period, &r.BurstPercent, &r.Hard); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading quotas: %w", err)
		}
		r.Period = windows.Granularity(period)
		rules[[2]string{tenant, metric}] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading quotas: %w", err)
	}
	return rules, nil
}
