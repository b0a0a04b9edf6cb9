package config_test

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/testkit/testpki"
)

// TestKafkaTransportSecurity: every service reads the Kafka TLS and SASL
// variables, builds its clients' security from them at start, rejects an
// incoherent combination naming the variable, and takes the password
// only from the environment or a file, never from a flag.
func TestKafkaTransportSecurity(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, err := testpki.NewCA("config test CA")
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := testpki.WriteFile(dir, "ca.pem", ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(dir, "password")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	saslSSL := map[string]string{"KAFKA_TLS": "true", "KAFKA_TLS_CA_FILE": caFile, "KAFKA_SASL_MECHANISM": "scram-sha-512", "KAFKA_SASL_USERNAME": "metering"}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range saslSSL {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		want     string // the Security's String
		password string
		wantErr  string
	}{
		{"default is plaintext", nil, nil, "PLAINTEXT", "", ""},
		{"sasl_ssl with the password in the environment", with(map[string]string{"KAFKA_SASL_PASSWORD": "pw"}), nil, "SASL_SSL (SCRAM-SHA-512 as metering)", "pw", ""},
		{"sasl_ssl with the password in a file", with(map[string]string{"KAFKA_SASL_PASSWORD_FILE": pwFile}), nil, "SASL_SSL (SCRAM-SHA-512 as metering)", "s3cret", ""},
		{"flags for the rest", map[string]string{"KAFKA_SASL_PASSWORD": "pw"}, []string{"-kafka-tls", "-kafka-tls-ca-file", caFile, "-kafka-sasl-mechanism", "plain", "-kafka-sasl-username", "u"}, "SASL_SSL (PLAIN as u)", "pw", ""},
		{"a flag turns TLS off again", map[string]string{"KAFKA_TLS": "true"}, []string{"-kafka-tls=false"}, "PLAINTEXT", "", ""},
		{"no flag for the password", nil, []string{"-kafka-sasl-password", "pw"}, "", "", "flag provided but not defined"},
		{"password twice", with(map[string]string{"KAFKA_SASL_PASSWORD": "pw", "KAFKA_SASL_PASSWORD_FILE": pwFile}), nil, "", "", "not both"},
		{"missing password file", with(map[string]string{"KAFKA_SASL_PASSWORD_FILE": pwFile + ".missing"}), nil, "", "", "KAFKA_SASL_PASSWORD_FILE"},
		{"mechanism without password", saslSSL, nil, "", "", "KAFKA_SASL_USERNAME and a password"},
		{"CA without TLS", map[string]string{"KAFKA_TLS_CA_FILE": caFile}, nil, "", "", "KAFKA_TLS_CA_FILE is set but KAFKA_TLS is not"},
		{"TLS not a boolean", map[string]string{"KAFKA_TLS": "yes please"}, nil, "", "", "KAFKA_TLS: must be true or false"},
		{"unknown mechanism", with(map[string]string{"KAFKA_SASL_MECHANISM": "oauthbearer", "KAFKA_SASL_PASSWORD": "pw"}), nil, "", "", "KAFKA_SASL_MECHANISM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, load := range loaders {
				c, err := load(tt.args, env(tt.env))
				if tt.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
						t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if c.KafkaSecurity == nil || c.KafkaSecurity.String() != tt.want || c.KafkaAuth.SASLPassword != tt.password {
					t.Fatalf("security %v with password %q, want %s with %q", c.KafkaSecurity, c.KafkaAuth.SASLPassword, tt.want, tt.password)
				}
			}
		})
	}
	for _, service := range []string{"ingest", "aggregator", "biller"} {
		vars := config.Variables(service)
		for _, v := range []string{"KAFKA_TLS", "KAFKA_TLS_CA_FILE", "KAFKA_TLS_CERT_FILE", "KAFKA_TLS_KEY_FILE", "KAFKA_TLS_SERVER_NAME",
			"KAFKA_TLS_INSECURE_SKIP_VERIFY", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SASL_PASSWORD_FILE"} {
			if !slices.Contains(vars, v) {
				t.Errorf("%s does not read %s", service, v)
			}
		}
	}
}

var loaders = []func(args []string, getenv func(string) string) (config.Common, error){
	func(args []string, getenv func(string) string) (config.Common, error) {
		c, _, err := config.LoadIngest("ingest", args, getenv, io.Discard)
		return c.Common, err
	},
	func(args []string, getenv func(string) string) (config.Common, error) {
		c, _, err := config.LoadAggregator("aggregator", args, getenv, io.Discard)
		return c.Common, err
	},
	func(args []string, getenv func(string) string) (config.Common, error) {
		c, _, err := config.LoadBiller("biller", args, getenv, io.Discard)
		return c.Common, err
	},
}
