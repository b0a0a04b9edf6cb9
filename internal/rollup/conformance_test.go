package rollup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"testing"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/rollup"
)

// TestRawRecordsReadLikeHTTPBodies feeds every single-object vector of
// testdata/conformance/decode.json to the aggregator as a raw Kafka
// record (a record that bypassed ingest): a vector ingest accepts is
// counted as exactly its event, and one ingest refuses is a dead letter,
// so a raw record and an HTTP event cannot be read two ways.
func TestRawRecordsReadLikeHTTPBodies(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../testdata/conformance/decode.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []struct {
		Name        string `json:"name"`
		ContentType string `json:"content_type"`
		Body        string `json:"body"`
		Want        struct {
			Events []string `json:"events"`
		} `json:"want"`
	}
	if err := json.Unmarshal(raw, &vectors); err != nil {
		t.Fatal(err)
	}
	a, db := newAgg(t) // the clock the vectors are written for: 2026-11-21T19:00:00Z
	ctx := context.Background()
	from, tried := int64(-1), 0
	for _, v := range vectors {
		body := []byte(v.Body)
		if v.ContentType != "application/json" || !bytes.HasPrefix(bytes.TrimLeft(body, " \t\r\n"), []byte("{")) {
			continue
		}
		tried++
		db.Exec(t, `TRUNCATE ledger, ledger_conflicts, usage_windows`)
		off := max(from, 0)
		res, err := a.Apply(ctx, 0, from, []rollup.Record{{Offset: off, Key: []byte("acme"), Value: body, Time: now}})
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		from = res.NextOffset
		switch len(v.Want.Events) {
		case 0:
			if res.Counted != 0 || res.DeadLettered != 1 {
				t.Errorf("%s: ingest refuses it, the aggregator %+v", v.Name, res)
			}
		case 1:
			var want events.Event
			if err := want.UnmarshalJSON([]byte(v.Want.Events[0])); err != nil {
				t.Fatalf("%s: the vector's event: %v", v.Name, err)
			}
			sum := sha256.Sum256([]byte(v.Want.Events[0]))
			if res.Counted != 1 || res.DeadLettered != 0 {
				t.Errorf("%s: ingest accepts it, the aggregator %+v", v.Name, res)
				continue
			}
			if n := count(t, db, `SELECT count(*) FROM ledger_events WHERE tenant = $1 AND event_id = $2 AND metric = $3 AND value = $4 AND event_time = $5 AND payload_hash = ledger_hash($6)`,
				want.Tenant, want.ID, want.Metric, want.Value, want.Time, sum[:]); n != 1 {
				t.Errorf("%s: the counted event is not %s", v.Name, v.Want.Events[0])
			}
		default:
			t.Fatalf("%s: one object read as %d events", v.Name, len(v.Want.Events))
		}
	}
	if tried < 10 {
		t.Fatalf("only %d single-object vectors", tried)
	}
}
