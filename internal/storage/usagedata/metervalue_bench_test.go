package usagedata_test

import (
	"context"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/internal/windows"
)

// BenchmarkMeterValue reads a filter quota's value (sum, one model of
// 1,000) on a meter holding a month of hour windows, 30 day windows and a
// month window for each of 1,000 groups of one tenant (about 750,000
// windows), as a batch's quota evaluation does.
func BenchmarkMeterValue(b *testing.B) {
	ctx := context.Background()
	db := pgtest.New(b)
	month := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	db.Exec(b, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT 'acme', 'tokens_by_model', '["m' || g || '"]', 'hour', $1::timestamptz + h * interval '1 hour', 1, 1
		FROM generate_series(1, 1000) AS g, generate_series(0, 719) AS h`, month)
	db.Exec(b, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT 'acme', 'tokens_by_model', '["m' || g || '"]', 'day', $1::timestamptz + d * interval '1 day', 24, 24
		FROM generate_series(1, 1000) AS g, generate_series(0, 29) AS d`, month)
	db.Exec(b, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT 'acme', 'tokens_by_model', '["m' || g || '"]', 'month', $1, 720, 720 FROM generate_series(1, 1000) AS g`, month)
	db.Exec(b, `ANALYZE usage_windows`)
	groupBy := []string{"model"}
	for _, tc := range []struct {
		name   string
		filter map[string]string
	}{{"one group of 1000", map[string]string{"model": "m7"}}, {"every group", nil}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				v, err := usagedata.MeterValue(ctx, db.Pool, "acme", "tokens_by_model", meter.Sum, groupBy, tc.filter, windows.Month, month)
				if err != nil || v.Sign() == 0 {
					b.Fatal(v, err)
				}
			}
		})
	}
	b.Run("GroupValue", func(b *testing.B) {
		for b.Loop() {
			if _, err := usagedata.GroupValue(ctx, db.Pool, "acme", "tokens_by_model", `["m7"]`, windows.Day, month); err != nil {
				b.Fatal(err)
			}
		}
	})
}
