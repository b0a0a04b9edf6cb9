package config_test

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/config"
)

// TestIngestBillerURL: BILLER_URL (flag -biller-url) is unset by default
// (nil), and otherwise an http or https URL with a host and nothing the
// forwarding would drop (user, query, fragment); -help documents it.
func TestIngestBillerURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    string
		wantErr bool
	}{
		{"unset", nil, nil, "", false},
		{"env", map[string]string{"BILLER_URL": "http://127.0.0.1:8082"}, nil, "http://127.0.0.1:8082", false},
		{"with a path", map[string]string{"BILLER_URL": "https://billing.internal/api"}, nil, "https://billing.internal/api", false},
		{"flag beats env", map[string]string{"BILLER_URL": "http://a:1"}, []string{"-biller-url", "http://b:2"}, "http://b:2", false},
		{"no scheme", map[string]string{"BILLER_URL": "127.0.0.1:8082"}, nil, "", true},
		{"ftp", map[string]string{"BILLER_URL": "ftp://host"}, nil, "", true},
		{"no host", map[string]string{"BILLER_URL": "http://"}, nil, "", true},
		{"a user", map[string]string{"BILLER_URL": "http://u:p@host"}, nil, "", true},
		{"a query", map[string]string{"BILLER_URL": "http://host?x=1"}, nil, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _, err := config.LoadIngest("ingest", tt.args, env(tt.env), io.Discard)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "BILLER_URL") {
					t.Fatalf("err = %v, want one naming BILLER_URL", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if c.BillerURL != nil {
				got = c.BillerURL.String()
			}
			if got != tt.want {
				t.Fatalf("BillerURL = %q, want %q", got, tt.want)
			}
		})
	}
	var help bytes.Buffer
	_, _, _ = config.LoadIngest("ingest", []string{"-help"}, env(nil), &help)
	if !strings.Contains(help.String(), "BILLER_URL") || !strings.Contains(help.String(), "console") {
		t.Errorf("-help does not document BILLER_URL:\n%s", help.String())
	}
}
