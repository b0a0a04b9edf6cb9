package usagedata

import (
	"context"
	"fmt"

	"github.com/usagemeter/metering/internal/storage"
)

// ImplicitMeterCounted reports whether usage_windows holds a window of the
// implicit meter of metric name (meter name, the empty group key) while no
// meter of that name is defined: name is then in use as a metric whose
// events were counted, and a defined meter may not take it.
//
// usage_windows is keyed by tenant first, so the read walks the distinct
// tenants through that key (a loose index scan) and probes each one's
// (tenant, name, empty group key) prefix: a few index lookups per tenant,
// never a scan of the windows.
func ImplicitMeterCounted(ctx context.Context, q storage.Executor, name string) (bool, error) {
	var counted bool
	err := q.QueryRow(ctx, `WITH RECURSIVE tenants(tenant) AS (
			(SELECT tenant FROM usage_windows ORDER BY tenant LIMIT 1)
			UNION ALL
			SELECT (SELECT w.tenant FROM usage_windows w WHERE w.tenant > t.tenant ORDER BY w.tenant LIMIT 1)
			FROM tenants t WHERE t.tenant IS NOT NULL
		)
		SELECT NOT EXISTS (SELECT 1 FROM meters WHERE name = $1)
			AND EXISTS (SELECT 1 FROM tenants t WHERE t.tenant IS NOT NULL AND EXISTS (
				SELECT 1 FROM usage_windows w WHERE w.tenant = t.tenant AND w.meter = $1 AND w.group_key = ''))`,
		name).Scan(&counted)
	if err != nil {
		return false, fmt.Errorf("looking for counted usage of metric %s: %w", name, err)
	}
	return counted, nil
}
