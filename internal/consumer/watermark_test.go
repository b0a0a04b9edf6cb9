package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestCaughtUpPartitionsMoveTheirWatermark: once a member has applied
// every record of its partitions, their watermarks move to the time of
// its latest look at the log ends, past every record's timestamp, while
// no record arrives; a partition that never held a record gets its row.
func TestCaughtUpPartitionsMoveTheirWatermark(t *testing.T) {
	const topic, group = "usage.events", "watermark-group"
	db := pgtest.New(t)
	kc := kafkatest.Start(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	kc.CreateTopic(t, topic, 2)
	produce(t, kc, topic, 0, 5) // one tenant: one partition holds them all
	produced := time.Now()
	p := start(t, db, kc, topic, group)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ws, err := billingdata.Watermarks(context.Background(), p.db.Pool, group, topic)
		if err != nil {
			t.Fatal(err)
		}
		var past int
		var next int64
		for _, w := range ws {
			next += w.NextOffset
			if w.Watermark != nil && w.Watermark.After(produced) {
				past++
			}
		}
		if len(ws) == 2 && past == 2 && next == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: %+v, want both partitions' watermarks after %s and 5 records applied", ws, produced.UTC().Format(time.RFC3339Nano))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Idle, the watermarks keep moving with the clock.
	first, err := billingdata.Watermarks(context.Background(), db.Pool, group, topic)
	if err != nil {
		t.Fatal(err)
	}
	for {
		ws, err := billingdata.Watermarks(context.Background(), db.Pool, group, topic)
		if err != nil {
			t.Fatal(err)
		}
		if ws[0].Watermark.After(*first[0].Watermark) && ws[1].Watermark.After(*first[1].Watermark) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("idle watermarks do not move: %+v then %+v", first, ws)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
