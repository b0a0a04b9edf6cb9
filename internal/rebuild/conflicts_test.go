package rebuild

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestRebuiltWindowsCountHeldCopiesOnce: the held conflicts operators
// counted join the rebuilt windows by the rule live counting follows: per
// (tenant, id, metric, event time) their maximum, over the replayed
// counted event when it has that metric and time, never their sum.
func TestRebuiltWindowsCountHeldCopiesOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const schema = "rebuild_conflicts"
	if err := createShadow(ctx, db.Pool, schema); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 21, 18, 0, 0, 0, time.UTC)
	// The replay counted order-5, order-3 (raised to 250 by the resend an
	// operator counted live, recorded under the first-seen rule) and
	// order-4 at api_calls; order-6's counted event is older than the replay.
	for _, l := range []struct {
		id    string
		value int64
	}{{"order-5", 100}, {"order-3", 250}, {"order-4", 100}} {
		db.Exec(t, fmt.Sprintf(`INSERT INTO %s.ledger (tenant, event_id, payload_hash, metric, value, event_time, event_day, src_partition, src_offset)
			VALUES ('acme', $1, '\x00', 'api_calls', $2, $3::timestamptz, ($3::timestamptz AT TIME ZONE 'UTC')::date, 0, 0)`, schema), l.id, l.value, at)
	}
	db.Exec(t, fmt.Sprintf(`INSERT INTO %s.usage_windows (tenant, metric, granularity, window_start, value, events)
		VALUES ('acme', 'api_calls', 'month', '2026-11-01Z', 450, 3)`, schema))
	for i, c := range []struct {
		id, metric, resolution string
		value                  int64
	}{
		{"order-5", "tokens", "counted", 700},
		{"order-5", "tokens", "counted", 900},
		{"order-5", "tokens", "dismissed", 5000},
		{"order-3", "api_calls", "counted", 250},
		{"order-4", "api_calls", "counted", 60},
		{"order-6", "tokens", "counted", 40},
	} {
		db.Exec(t, `INSERT INTO ledger_conflicts (tenant, event_id, counted_hash, rejected_hash, rejected_event, src_partition, src_offset,
				metric, value, event_time, resolution, counted_amount, counted_events)
			VALUES ('acme', $1, '\x00', $2, '{}', 0, $3, $4, $5, $6, $7, CASE WHEN $7 = 'counted' THEN 0 END, CASE WHEN $7 = 'counted' THEN 0 END)`,
			c.id, []byte{byte(i)}, i, c.metric, c.value, at, c.resolution)
	}
	rows, err := db.Pool.Query(ctx, fmt.Sprintf(`SELECT metric, value::text, events FROM %s r WHERE granularity = 'month' ORDER BY metric`, rebuilt(schema)))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var metric, value string
		var events int64
		if err := rows.Scan(&metric, &value, &events); err != nil {
			t.Fatal(err)
		}
		got[metric] = fmt.Sprintf("%s/%d", value, events)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	// api_calls: the replay's 450 over 3 events, nothing over it (order-3's
	// 250 is the replayed maximum, order-4's 60 below it); tokens: order-5's
	// copies count 900 once, order-6's 40 is its own event.
	want := map[string]string{"api_calls": "450/3", "tokens": "940/2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rebuilt month windows %v, want %v", got, want)
	}
}
