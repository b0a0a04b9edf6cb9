package config_test

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/config"
)

// TestBillerAllowedLateness: BILLING_ALLOWED_LATENESS (flag
// -billing-allowed-lateness) defaults to 1h, must be positive, and the
// biller reads the aggregator's CONSUMER_GROUP.
func TestBillerAllowedLateness(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    time.Duration
		group   string
		wantErr string
	}{
		{"default", nil, nil, time.Hour, "metering-aggregator", ""},
		{"env", map[string]string{"BILLING_ALLOWED_LATENESS": "90m", "CONSUMER_GROUP": "g"}, nil, 90 * time.Minute, "g", ""},
		{"flag beats env", map[string]string{"BILLING_ALLOWED_LATENESS": "90m"}, []string{"-billing-allowed-lateness", "2h"}, 2 * time.Hour, "metering-aggregator", ""},
		{"zero", map[string]string{"BILLING_ALLOWED_LATENESS": "0s"}, nil, 0, "", "BILLING_ALLOWED_LATENESS"},
		{"not a duration", nil, []string{"-billing-allowed-lateness", "soon"}, 0, "", "BILLING_ALLOWED_LATENESS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _, err := config.LoadBiller("biller", tt.args, env(tt.env), io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil || c.AllowedLateness != tt.want || c.ConsumerGroup != tt.group {
				t.Fatalf("lateness %s group %q, %v; want %s %q", c.AllowedLateness, c.ConsumerGroup, err, tt.want, tt.group)
			}
		})
	}
}
