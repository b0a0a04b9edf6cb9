package config_test

import (
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/config"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadIngest(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		check   func(config.Ingest) bool
		wantErr string
	}{
		{"defaults", nil, nil, func(c config.Ingest) bool {
			return c.HTTPAddr == ":8080" && c.DatabaseURL == config.DefaultDatabaseURL &&
				reflect.DeepEqual(c.KafkaBrokers, []string{"127.0.0.1:9092"}) && c.PublishTimeout == 5*time.Second &&
				c.DedupHorizon == 35*24*time.Hour
		}, ""},
		{"env", map[string]string{"KAFKA_BROKERS": "a:1, b:2", "HTTP_ADDR": ":9", "PUBLISH_TIMEOUT": "2s"}, nil, func(c config.Ingest) bool {
			return reflect.DeepEqual(c.KafkaBrokers, []string{"a:1", "b:2"}) && c.HTTPAddr == ":9" && c.PublishTimeout == 2*time.Second
		}, ""},
		{"flag beats env", map[string]string{"HTTP_ADDR": ":9", "RATE_LIMIT_KEY_EVENTS": "10"},
			[]string{"-http-addr", ":7", "-rate-limit-key-events", "20"}, func(c config.Ingest) bool {
				return c.HTTPAddr == ":7" && c.KeyEventsPerSecond == 20
			}, ""},
		{"bad env names the variable", map[string]string{"PUBLISH_TIMEOUT": "soon"}, nil, nil, "PUBLISH_TIMEOUT"},
		{"bad flag", nil, []string{"-max-inflight-events", "-3"}, nil, "MAX_INFLIGHT_EVENTS"},
		{"burst below a batch", map[string]string{"RATE_LIMIT_KEY_BURST": "10"}, nil, nil, "at least 1000"},
		{"empty brokers", map[string]string{"KAFKA_BROKERS": " , "}, nil, nil, "KAFKA_BROKERS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := config.LoadIngest("ingest", tt.args, env(tt.env), io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to mention %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("config = %+v", c)
			}
		})
	}
}
