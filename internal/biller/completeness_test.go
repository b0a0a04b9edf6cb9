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

// TestReportShowsCompleteness: the table ends with a line per tenant
// saying whether its period is complete or why not; CSV and JSON carry
// complete and completeness on every row, after the existing columns.
func TestReportShowsCompleteness(t *testing.T) {
	t.Parallel()
	row := func(tenant string, complete bool, why string) stripesync.Row {
		return stripesync.Row{Tenant: tenant, Metric: "api_calls", Period: "2026-11", Metered: big.NewInt(1), Reported: big.NewInt(1), InFlight: new(big.Int),
			CarriedOut: new(big.Int), CarriedIn: new(big.Int), Stripe: big.NewInt(1), Drift: new(big.Int), Status: stripesync.StatusOK,
			Complete: complete, Completeness: why}
	}
	behind := "partition 2 applied up to 2026-11-30T23:10:00Z, needs 2026-12-01T01:00:00Z; 3 dead letters wait"
	rows := []stripesync.Row{row("acme", true, "complete"), row("globex", false, behind), row("globex", false, behind)}
	var buf bytes.Buffer
	if err := biller.WriteReport(&buf, rows, "table"); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.HasSuffix(out, "3 rows: 3 ok, 0 pending, 0 drift, 0 unmapped\n"+
		"period 2026-11 of acme: complete\n"+
		"period 2026-11 of globex: not complete: "+behind+"\n") {
		t.Errorf("table:\n%s", out)
	}
	buf.Reset()
	if err := biller.WriteReport(&buf, rows, "csv"); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil || len(recs) != 4 || len(recs[0]) != 18 || recs[0][13] != "group" || recs[0][14] != "complete" || recs[0][15] != "completeness" ||
		recs[1][14] != "true" || recs[1][15] != "complete" || recs[2][14] != "false" || recs[2][15] != behind {
		t.Errorf("csv: %q %v", recs, err)
	}
	buf.Reset()
	if err := biller.WriteReport(&buf, rows, "json"); err != nil {
		t.Fatal(err)
	}
	var back []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back[0]["complete"] != true || back[2]["completeness"] != behind {
		t.Errorf("json: %s %v", buf.String(), err)
	}
}
