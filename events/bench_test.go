package events_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
)

// benchBody returns n distinct realistic events as a JSON array and as NDJSON.
func benchBody(n int) (array, ndjson []byte) {
	lines := make([]string, n)
	for i := range lines {
		e := events.Event{ID: events.NewID(), Tenant: fmt.Sprintf("tenant-%d", i%50), Metric: "api_calls", Value: int64(i),
			Time: now.Add(-time.Duration(i) * time.Millisecond), Source: "checkout-svc",
			Properties: map[string]string{"endpoint": "/v1/chat", "region": "eu"}}
		lines[i] = string(e.AppendJSON(nil))
	}
	return []byte("[" + strings.Join(lines, ",") + "]"), []byte(strings.Join(lines, "\n"))
}

// BenchmarkDecode measures decode + validate per event, beside the
// baseline of plain encoding/json into a struct with no checks at all.
func BenchmarkDecode(b *testing.B) {
	for _, n := range []int{100, 1000} {
		array, ndjson := benchBody(n)
		d := decoder()
		perEvent := func(b *testing.B) {
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
		}
		b.Run(fmt.Sprintf("baseline-encoding-json/array-%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(array)))
			type plain struct {
				ID, Tenant, Metric string
				Value              int64
				Time               time.Time
				Source             string
				Properties         map[string]string
			}
			for b.Loop() {
				var out []plain
				if err := json.Unmarshal(array, &out); err != nil {
					b.Fatal(err)
				}
			}
			perEvent(b)
		})
		b.Run(fmt.Sprintf("decode-validate/array-%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(array)))
			for b.Loop() {
				if _, err := d.Decode(events.MediaJSON, array); err != nil {
					b.Fatal(err)
				}
			}
			perEvent(b)
		})
		b.Run(fmt.Sprintf("decode-validate/ndjson-%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(ndjson)))
			for b.Loop() {
				if _, err := d.Decode(events.MediaNDJSON, ndjson); err != nil {
					b.Fatal(err)
				}
			}
			perEvent(b)
		})
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	e := validEvent()
	buf := make([]byte, 0, 256)
	for b.Loop() {
		buf = e.AppendJSON(buf[:0])
	}
}
