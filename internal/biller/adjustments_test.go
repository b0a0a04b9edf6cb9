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

func TestReportListsAdjustmentsBesideTheirCounterparts(t *testing.T) {
	t.Parallel()
	rows := []stripesync.Row{{Tenant: "acme", Metric: "api_calls", Meter: "api_calls", Period: "2026-11",
		Metered: big.NewInt(90), Reported: big.NewInt(120), InFlight: new(big.Int), CarriedOut: new(big.Int), CarriedIn: new(big.Int),
		Stripe: big.NewInt(120), Drift: new(big.Int), Credited: big.NewInt(30), Status: stripesync.StatusOK,
		Adjustments: []stripesync.AdjustmentLine{
			{ID: "a1", Amount: -30, Reason: "refund", Counterpart: stripesync.CounterpartCredit, Value: "30", Status: "sent",
				CreditAmount: -1500, Currency: "usd", BalanceTransaction: "cbtxn_1"},
			{ID: "a2", Amount: 20, Counterpart: stripesync.CounterpartPush, Value: "20", Identifier: "mu_2", Status: "sent"},
		}}}
	var table bytes.Buffer
	if err := biller.WriteReport(&table, rows, "table"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"2 adjustments:", "COUNTERPART", "cbtxn_1", "-1500 usd", "mu_2"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	var out bytes.Buffer
	if err := biller.WriteReport(&out, rows, "csv"); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&out).ReadAll()
	if err != nil || len(recs) != 2 || recs[0][16] != "credited" || recs[1][16] != "30" ||
		recs[1][17] != "a1:-30:credit:cbtxn_1; a2:20:push:mu_2" {
		t.Fatalf("csv %q, %v", recs, err)
	}
	out.Reset()
	if err := biller.WriteReport(&out, rows, "json"); err != nil {
		t.Fatal(err)
	}
	var back []map[string]any
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back[0]["credited"] != float64(30) || len(back[0]["adjustments"].([]any)) != 2 {
		t.Fatalf("json %s, %v", out.String(), err)
	}
}
