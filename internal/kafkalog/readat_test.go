package kafkalog_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/record"
)

// TestReadAt: each wanted offset once, in order, with its record; offsets
// far apart reached by seeking; offsets past the log's end reported
// missing, never waited for.
func TestReadAt(t *testing.T) {
	t.Parallel()
	c := newCluster(t, "readat", 2000, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	for _, tt := range []struct {
		name    string
		offsets []int64
		want    string
	}{
		{"none", nil, ""},
		{"close together", []int64{0, 1, 5, 9}, "0=v0 1=v1 5=v5 9=v9"},
		{"far apart", []int64{3, 1500, 1999}, "3=v3 1500=v1500 1999=v1999"},
		{"past the end", []int64{1998, 2000, 5000}, "1998=v1998 2000:past 5000:past"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			var got []string
			err := c.ReadAt(ctx, "readat", 0, tt.offsets, func(off int64, rec *record.Record, missing string) error {
				switch {
				case rec != nil && rec.Offset == off:
					got = append(got, fmt.Sprintf("%d=%s", off, rec.Value))
				case rec == nil && strings.Contains(missing, "past the end"):
					got = append(got, fmt.Sprintf("%d:past", off))
				default:
					got = append(got, fmt.Sprintf("%d:%v %q", off, rec, missing))
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if s := strings.Join(got, " "); s != tt.want {
				t.Errorf("got %q, want %q", s, tt.want)
			}
		})
	}
}
