package billingdata_test

import (
	"context"
	"testing"

	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// A plan with quotas on defined meters of a metric besides the metric's
// own quota bills the metric once when the meters' quotas name no Stripe
// event (NULL: they limit, they do not bill); a meter quota that names one
// bills each group of the meter apart, under its own group key.
func TestMeterQuotasBilling(t *testing.T) {
	t.Parallel()
	type row struct{ metric, groupKey, group, eventName, meter string }
	for _, tc := range []struct {
		name    string
		quotas  string
		windows string
		want    []row
	}{
		{
			name: "meter quotas not billed",
			quotas: `('pro', 'tokens', 1000, 'month', 'tokens_used', NULL, '{}', false),
				('pro', 'tokens', 100, 'month', NULL, 'tokens_by_model', '{"model":"gpt-4"}', false),
				('pro', 'tokens', 50, 'day', NULL, 'tokens_by_model', '{}', true)`,
			want: []row{{"tokens", "", "", "tokens_used", ""}},
		},
		{
			name: "a billed meter quota bills each group",
			quotas: `('pro', 'tokens', 1000, 'month', 'tokens_used', NULL, '{}', false),
				('pro', 'tokens', 50, 'day', 'tokens_{model}', 'tokens_by_model', '{}', true)`,
			windows: `, ('t1', 'tokens_by_model', '["o1"]', 'month', $1, 300, 3)`,
			want: []row{
				{"tokens", "", "", "tokens_used", ""},
				{"tokens_by_model", `["gpt-4"]`, `["gpt-4"]`, "tokens_{model}", "tokens_by_model"},
				{"tokens_by_model", `["o1"]`, `["o1"]`, "tokens_{model}", "tokens_by_model"},
			},
		},
		{
			name: "a long group key is read back through its digest",
			quotas: `('pro', 'tokens', 1000, 'month', 'tokens_used', NULL, '{}', false),
				('pro', 'tokens', NULL, 'month', 'tokens_{model}', 'tokens_by_model', '{}', false)`,
			windows: `, ('t1', 'tokens_by_model', 'sha256:` + zeros64 + `', 'month', $1, 300, 3)`,
			want: []row{
				{"tokens", "", "", "tokens_used", ""},
				{"tokens_by_model", `["gpt-4"]`, `["gpt-4"]`, "tokens_{model}", "tokens_by_model"},
				{"tokens_by_model", "sha256:" + zeros64, `["long"]`, "tokens_{model}", "tokens_by_model"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := pgtest.New(t)
			db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
			db.Exec(t, `INSERT INTO meters (name, metric, aggregation, group_by, version) VALUES ('tokens_by_model', 'tokens', 'sum', '{model}', 1)`)
			db.Exec(t, `INSERT INTO meter_group_keys (meter, digest, group_key) VALUES ('tokens_by_model', 'sha256:`+zeros64+`', '["long"]')`)
			db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name, meter, group_filter, per_group) VALUES `+tc.quotas)
			db.Exec(t, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ('t1', 'pro', 'cus_1')`)
			db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events) VALUES
				('t1', 'tokens', '', 'month', $1, 500, 5), ('t1', 'tokens_by_model', '["gpt-4"]', 'month', $1, 200, 2)`+tc.windows, month)

			ds, err := billingdata.Deltas(ctx, db.Pool, month, "")
			if err != nil {
				t.Fatal(err)
			}
			var got []row
			for _, d := range ds {
				got = append(got, row{d.Metric, d.GroupKey, d.Group, d.EventName, d.Meter})
			}
			if !equalRows(got, tc.want) {
				t.Fatalf("Deltas = %+v; want %+v", got, tc.want)
			}
			ts, err := billingdata.PeriodTotals(ctx, db.Pool, month, "")
			if err != nil {
				t.Fatal(err)
			}
			got = nil
			for _, x := range ts {
				m := x.Meter
				if !x.Defined {
					m = ""
				}
				got = append(got, row{x.Meter, x.GroupKey, x.Group, x.EventName, m})
			}
			if !equalRows(got, tc.want) {
				t.Fatalf("PeriodTotals = %+v; want %+v", got, tc.want)
			}
		})
	}
}

const zeros64 = "0000000000000000000000000000000000000000000000000000000000000000"

func equalRows[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
