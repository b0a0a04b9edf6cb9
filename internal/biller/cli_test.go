package biller_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"math/big"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/stripesync"
)

func TestWriteReport(t *testing.T) {
	rows := []stripesync.Row{
		{Tenant: "acme", Metric: "api_calls", Period: "2026-11", Metered: big.NewInt(100), Reported: big.NewInt(100), InFlight: new(big.Int),
			CarriedOut: new(big.Int), CarriedIn: new(big.Int), Stripe: big.NewInt(100), Drift: new(big.Int), Status: stripesync.StatusOK},
		{Tenant: "globex", Metric: "tokens", Period: "2026-11", Metered: big.NewInt(7), Reported: new(big.Int), InFlight: new(big.Int),
			CarriedOut: new(big.Int), CarriedIn: new(big.Int), Drift: new(big.Int), Status: stripesync.StatusUnmapped, Note: "the tenant has no stripe_customer_id"},
		{Tenant: "globex", Metric: "tokens", Period: "2026-11", Metered: big.NewInt(5), Reported: big.NewInt(5), InFlight: new(big.Int),
			CarriedOut: new(big.Int), CarriedIn: new(big.Int), Stripe: big.NewInt(5), Drift: new(big.Int), Status: stripesync.StatusOK,
			Meter: "tokens_by_model", Group: `["gpt-4"]`},
	}
	var buf bytes.Buffer
	if err := biller.WriteReport(&buf, rows, "table"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "3 rows: 2 ok, 0 pending, 0 drift, 1 unmapped") || !strings.Contains(buf.String(), "globex") ||
		!strings.Contains(buf.String(), `tokens_by_model  ["gpt-4"]`) {
		t.Fatalf("table:\n%s", buf.String())
	}
	buf.Reset()
	if err := biller.WriteReport(&buf, rows, "csv"); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil || len(recs) != 4 || recs[0][0] != "tenant" || recs[2][6] != "-" || recs[1][10] != "ok" || recs[3][13] != `["gpt-4"]` {
		t.Fatalf("csv: %v %v", recs, err)
	}
	buf.Reset()
	if err := biller.WriteReport(&buf, rows, "json"); err != nil {
		t.Fatal(err)
	}
	var back []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back[0]["metered"] != float64(100) || back[1]["stripe"] != nil {
		t.Fatalf("json: %s %v", buf.String(), err)
	}
	if err := biller.WriteReport(&buf, rows, "xml"); err == nil {
		t.Fatal("unknown format accepted")
	}
	if _, err := biller.ParsePeriod("2026-13"); err == nil {
		t.Fatal("bad period accepted")
	}
}
