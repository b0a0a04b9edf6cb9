package deadletters_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/usagemeter/metering/internal/storage/deadletters"
	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestRefusedOffsets: the dead-lettered offsets of one topic's partition
// within the range, both ends included, whatever their status (pending, replayed, discarded).
func TestRefusedOffsets(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	for _, d := range []struct {
		topic     string
		partition int
		offset    int64
		status    string
	}{
		{"usage.events", 0, 3, "pending"}, {"usage.events", 0, 5, "replayed"}, {"usage.events", 0, 9, "discarded"},
		{"usage.events", 0, 10, "pending"}, {"usage.events", 1, 4, "pending"}, {"other", 0, 4, "pending"},
	} {
		db.Exec(t, `INSERT INTO usage_dlq (tenant, error, error_class, source_topic, source_partition, source_offset, payload, status)
			VALUES ('t', 'bad', 'invalid', $1, $2, $3, '\x00', $4)`, d.topic, d.partition, d.offset, d.status)
	}
	got, err := deadletters.RefusedOffsets(context.Background(), db.Pool, "usage.events", 0, 3, 9)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "map[3:true 5:true 9:true]" {
		t.Errorf("refused offsets %v, want 3, 5 and 9", got)
	}
}
