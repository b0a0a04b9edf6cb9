package config_test

import (
	"io"
	"testing"

	"github.com/usagemeter/metering/internal/config"
)

// FuzzLoad: whatever the environment holds, loading either fails with a
// message naming a variable or yields usable values.
func FuzzLoad(f *testing.F) {
	for _, s := range []string{"", "0", "-1", "1e9", "30s", "1h", "NaN", "Inf", "9223372036854775807", " , ", "a:1,b:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		getenv := func(string) string { return v }
		for _, load := range []func() (config.Common, error){
			func() (config.Common, error) {
				c, _, err := config.LoadIngest("ingest", nil, getenv, io.Discard)
				return c.Common, err
			},
			func() (config.Common, error) {
				c, _, err := config.LoadAggregator("aggregator", nil, getenv, io.Discard)
				return c.Common, err
			},
			func() (config.Common, error) {
				c, _, err := config.LoadBiller("biller", nil, getenv, io.Discard)
				return c.Common, err
			},
		} {
			c, err := load()
			if err != nil {
				if err.Error() == "" {
					t.Fatal("an error without a message")
				}
				continue
			}
			if len(c.KafkaBrokers) == 0 || c.KafkaPartitions <= 0 || c.ShutdownTimeout <= 0 || c.DedupHorizon <= 0 {
				t.Fatalf("env %q loaded as %+v", v, c)
			}
		}
	})
}
