package deadletters_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage/deadletters"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

func TestApply(t *testing.T) {
	tests := []struct {
		name       string
		change     deadletters.Change
		wantMoved  string
		wantErr    error // errors.Is target; nil for success
		anyErr     bool  // some error that is not a sentinel
		wantAudits int   // one audit_log row per record moved
	}{
		{"named ids", deadletters.Change{Action: "discard", To: "discarded", IDs: []int64{3, 1}, Actor: "oncall", Note: "bad client"}, "[1 3]", nil, false, 2},
		{"all waiting ones, skipping resolved", deadletters.Change{Action: "replay", To: "replayed", All: true, Actor: "oncall"}, "[1 2 3]", nil, false, 3},
		{"an id that is not waiting", deadletters.Change{Action: "replay", To: "replayed", IDs: []int64{4}, Actor: "oncall"}, "[]", deadletters.ErrNoneWaiting, false, 0},
		{"an id that does not exist", deadletters.Change{Action: "replay", To: "replayed", IDs: []int64{99}, Actor: "oncall"}, "[]", deadletters.ErrNoneWaiting, false, 0},
		{"no actor", deadletters.Change{Action: "replay", To: "replayed", All: true}, "[]", nil, true, 0},
		{"neither ids nor all", deadletters.Change{Action: "replay", To: "replayed", Actor: "oncall"}, "[]", nil, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := pgtest.New(t)
			ctx := context.Background()
			for i := range 4 {
				db.Exec(t, `INSERT INTO usage_dlq (tenant, error, error_class, source_topic, source_partition, source_offset, payload)
					VALUES ('t', 'bad', 'invalid', 'usage.events', 0, $1, '\x00')`, i)
			}
			db.Exec(t, `UPDATE usage_dlq SET status = 'discarded' WHERE id = 4`)
			var moved []int64
			err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
				var err error
				moved, err = deadletters.Apply(ctx, tx, deadletters.UsageQueue, deadletters.MoveUsage, tt.change)
				return err
			})
			switch {
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			case tt.wantErr == nil && tt.anyErr != (err != nil):
				t.Fatalf("err %v, want error: %v", err, tt.anyErr)
			}
			if got := fmt.Sprint(append([]int64{}, moved...)); got != tt.wantMoved {
				t.Errorf("moved %s, want %s", got, tt.wantMoved)
			}
			var audits, changed int
			_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'dlq.usage.' || $1 AND actor = 'oncall'
				AND before = '{"status":"pending"}' AND after = jsonb_build_object('status', $2::text) AND note = $3`,
				tt.change.Action, tt.change.To, tt.change.Note).Scan(&audits)
			_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_dlq WHERE status = $1 AND resolved_at IS NOT NULL`, tt.change.To).Scan(&changed)
			if audits != tt.wantAudits {
				t.Errorf("%d audit rows, want %d", audits, tt.wantAudits)
			}
			if changed != len(moved) {
				t.Errorf("%d rows in status %q, but %d reported moved", changed, tt.change.To, len(moved))
			}
		})
	}
}

// An action on an empty queue with All does nothing and audits nothing.
func TestApplyAllOnEmptyQueue(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		moved, err := deadletters.Apply(ctx, tx, deadletters.UsageQueue, deadletters.MoveUsage, deadletters.Change{Action: "replay", To: "replayed", All: true, Actor: "oncall"})
		if len(moved) != 0 {
			t.Errorf("moved %v from an empty queue", moved)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var audits int
	_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_log`).Scan(&audits)
	if audits != 0 {
		t.Fatalf("%d audit rows for doing nothing", audits)
	}
}
