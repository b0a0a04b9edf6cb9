package config_test

import (
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/config"
)

// TestAggregatorAnomalies: the ANOMALY_* settings default to the
// detector's defaults, read the environment and flags, and refuse values
// that are not what they say.
func TestAggregatorAnomalies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    string // enabled sensitivity weeks min-volume lateness interval
		wantErr string
	}{
		{"default", nil, nil, "true 4 4 10 10m0s 1m0s", ""},
		{"env", map[string]string{"ANOMALY_ENABLED": "false", "ANOMALY_SENSITIVITY": "5.5", "ANOMALY_WEEKS": "6", "ANOMALY_MIN_VOLUME": "0",
			"ANOMALY_LATENESS": "1h", "ANOMALY_INTERVAL": "5m"}, nil, "false 11/2 6 0 1h0m0s 5m0s", ""},
		{"flags", nil, []string{"-anomaly-sensitivity", "3", "-anomaly-min-volume", "100000000000000000000"}, "true 3 4 100000000000000000000 10m0s 1m0s", ""},
		{"sensitivity zero", map[string]string{"ANOMALY_SENSITIVITY": "0"}, nil, "", "ANOMALY_SENSITIVITY"},
		{"sensitivity float syntax", nil, []string{"-anomaly-sensitivity", "1e1"}, "", "ANOMALY_SENSITIVITY"},
		{"weeks zero", map[string]string{"ANOMALY_WEEKS": "0"}, nil, "", "ANOMALY_WEEKS"},
		{"negative volume", map[string]string{"ANOMALY_MIN_VOLUME": "-1"}, nil, "", "ANOMALY_MIN_VOLUME"},
		{"enabled not a bool", map[string]string{"ANOMALY_ENABLED": "maybe"}, nil, "", "ANOMALY_ENABLED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _, err := config.LoadAggregator("aggregator", tt.args, func(k string) string { return tt.env[k] }, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			a := c.Anomalies
			got := strings.Join([]string{strconv.FormatBool(a.Enabled), a.Detector.Sensitivity.RatString(), strconv.Itoa(a.Detector.Weeks),
				a.Detector.MinVolume.String(), a.Lateness.String(), a.Interval.String()}, " ")
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if err := a.Detector.Validate(); err != nil {
				t.Errorf("detector: %v", err)
			}
		})
	}
	vars := strings.Join(config.Variables("aggregator"), " ")
	for _, v := range []string{"ANOMALY_ENABLED", "ANOMALY_SENSITIVITY", "ANOMALY_WEEKS", "ANOMALY_MIN_VOLUME", "ANOMALY_LATENESS", "ANOMALY_INTERVAL"} {
		if !strings.Contains(vars, v) {
			t.Errorf("the aggregator does not read %s", v)
		}
	}
}
