package accounts_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
	"github.com/usagemeter/metering/migrations"
)

// TestPricesUpgradeFrom0016: the unit prices set before price models
// become per_unit prices of the same amount, shown with their unit_price;
// unpriced quotas stay unpriced; the stored unit_price is kept; and a
// unit_price can no longer stand beside a price of another model.
func TestPricesUpgradeFrom0016(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	all, err := migrate.Load(migrations.FS)
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{}
	for _, m := range all[:16] {
		fsys[fmt.Sprintf("%04d_%s.sql", m.Version, m.Name)] = &fstest.MapFile{Data: []byte(m.SQL)}
	}
	db := pgtest.NewEmpty(t)
	if res, err := migrate.Apply(ctx, db.Pool, fsys, quiet); err != nil || res.To != 16 {
		t.Fatalf("Apply up to 0016 = %+v, %v", res, err)
	}
	db.Exec(t, `INSERT INTO plans (name) VALUES ('pro')`)
	db.Exec(t, `INSERT INTO plan_quotas (plan, metric, quota_limit, period, stripe_event_name, unit_price) VALUES
		('pro', 'api_calls', NULL, 'month', 'api_calls', 0.0020), ('pro', 'tokens', 10, 'month', 'tokens', NULL)`)
	if res, err := migrate.Apply(ctx, db.Pool, migrations.FS, quiet); err != nil || res.From != 16 {
		t.Fatalf("upgrade = %+v, %v", res, err)
	}
	p, err := accounts.New(db.Pool).Plan(ctx, "pro")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, q := range p.Quotas {
		b, _ := json.Marshal(q.Price)
		got = append(got, q.Metric+" "+string(b)+" "+q.UnitPrice)
	}
	want := []string{`api_calls {"model":"per_unit","unit_amount":"0.0020"} 0.0020`, `tokens null `}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("quotas after the upgrade:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var unit string
	if err := db.Pool.QueryRow(ctx, `SELECT unit_price::text FROM plan_quotas WHERE metric = 'api_calls'`).Scan(&unit); err != nil || unit != "0.0020" {
		t.Errorf("unit_price after the upgrade: %q %v", unit, err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE plan_quotas SET price = '{"model":"package","package_size":1,"package_amount":"1"}' WHERE metric = 'api_calls'`); err == nil {
		t.Error("a unit_price stands beside a package price")
	}
}

// TestPutPlanPrices: a price is stored as given and read back; a per_unit
// price also writes unit_price, another model does not; a UnitPrice
// without a Price is that per_unit price.
func TestPutPlanPrices(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	store := accounts.New(db.Pool)
	tiered, ferr := price.Parse(json.RawMessage(`{"model":"volume","tiers":[{"up_to":10,"unit_amount":"1"},{"up_to":null,"unit_amount":"0.5"}]}`))
	if ferr != nil {
		t.Fatal(ferr)
	}
	perUnit := price.PerUnitPrice("0.25")
	p, err := store.PutPlan(ctx, accounts.Plan{Name: "pro", Quotas: []accounts.Quota{
		{Metric: "a", Period: "month", StripeEventName: "a", Price: &tiered},
		{Metric: "b", Period: "month", StripeEventName: "b", Price: &perUnit},
		{Metric: "c", Period: "month", StripeEventName: "c", UnitPrice: "0.1"},
		{Metric: "d", Period: "month", StripeEventName: "d"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, q := range p.Quotas {
		b, _ := json.Marshal(q.Price)
		got = append(got, q.Metric+" "+string(b)+" "+q.UnitPrice)
	}
	want := []string{
		`a {"model":"volume","tiers":[{"up_to":10,"unit_amount":"1","flat_amount":"0"},{"up_to":null,"unit_amount":"0.5","flat_amount":"0"}]} `,
		`b {"model":"per_unit","unit_amount":"0.25"} 0.25`,
		`c {"model":"per_unit","unit_amount":"0.1"} 0.1`,
		`d null `,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("quotas:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var units string
	if err := db.Pool.QueryRow(ctx, `SELECT string_agg(metric || '=' || coalesce(unit_price::text, 'NULL'), ' ' ORDER BY metric) FROM plan_quotas`).Scan(&units); err != nil {
		t.Fatal(err)
	}
	if units != "a=NULL b=0.25 c=0.1 d=NULL" {
		t.Errorf("stored unit prices: %s", units)
	}
}
