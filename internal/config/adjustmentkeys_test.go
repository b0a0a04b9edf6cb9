package config_test

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/config"
)

// TestAdjustmentSigningKeys: ingest and the aggregator read the adjustment
// signing keys from ADJUSTMENT_SIGNING_KEYS or the file
// ADJUSTMENT_SIGNING_KEYS_FILE names, never from a flag; errors never
// show a secret; ALLOW_UNSIGNED_ADJUSTMENTS is false unless set.
func TestAdjustmentSigningKeys(t *testing.T) {
	t.Parallel()
	secret1, secret2 := strings.Repeat("s", 32), strings.Repeat("t", 48)
	dir := t.TempDir()
	file := filepath.Join(dir, "keys")
	if err := os.WriteFile(file, []byte("k2="+secret2+",k1="+secret1+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		ids     string
		allow   bool
		wantErr string
	}{
		{"none: nothing signs, nothing unsigned is allowed", nil, nil, "", false, ""},
		{"env", map[string]string{"ADJUSTMENT_SIGNING_KEYS": "k1=" + secret1}, nil, "k1", false, ""},
		{"file, rotation", map[string]string{"ADJUSTMENT_SIGNING_KEYS_FILE": file}, nil, "k2,k1", false, ""},
		{"development", map[string]string{"ALLOW_UNSIGNED_ADJUSTMENTS": "true"}, nil, "", true, ""},
		{"development flag", nil, []string{"-allow-unsigned-adjustments"}, "", true, ""},
		{"flag refused", nil, []string{"-adjustment-signing-keys", "k1=" + secret1}, "", false, "adjustment-signing-keys"},
		{"both", map[string]string{"ADJUSTMENT_SIGNING_KEYS": "k1=" + secret1, "ADJUSTMENT_SIGNING_KEYS_FILE": file}, nil, "", false, "not both"},
		{"short secret", map[string]string{"ADJUSTMENT_SIGNING_KEYS": "k1=short-secret"}, nil, "", false, "at least 32"},
		{"duplicate id", map[string]string{"ADJUSTMENT_SIGNING_KEYS": "k1=" + secret1 + ",k1=" + secret2}, nil, "", false, "twice"},
		{"not a pair", map[string]string{"ADJUSTMENT_SIGNING_KEYS": secret1}, nil, "", false, "id=secret"},
		{"bad allow", map[string]string{"ALLOW_UNSIGNED_ADJUSTMENTS": "maybe"}, nil, "", false, "ALLOW_UNSIGNED_ADJUSTMENTS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ic, _, ierr := config.LoadIngest("ingest", tt.args, env(tt.env), io.Discard)
			ac, _, aerr := config.LoadAggregator("aggregator", tt.args, env(tt.env), io.Discard)
			for svc, got := range map[string]struct {
				s   config.AdjustmentSigning
				err error
			}{"ingest": {ic.AdjustmentSigning, ierr}, "aggregator": {ac.AdjustmentSigning, aerr}} {
				if tt.wantErr != "" {
					if got.err == nil || !strings.Contains(got.err.Error(), tt.wantErr) {
						t.Errorf("%s: error %v, want one naming %q", svc, got.err, tt.wantErr)
					}
					if got.err != nil && (strings.Contains(got.err.Error(), secret1) || strings.Contains(got.err.Error(), "short-secret")) {
						t.Errorf("%s: the error shows a secret: %v", svc, got.err)
					}
					continue
				}
				if got.err != nil {
					t.Fatalf("%s: %v", svc, got.err)
				}
				if ids := strings.Join(got.s.Keys.IDs(), ","); ids != tt.ids || got.s.AllowUnsigned != tt.allow {
					t.Errorf("%s: keys %q allow %v, want %q %v", svc, ids, got.s.AllowUnsigned, tt.ids, tt.allow)
				}
				if p := got.s.Policy(); p.Keys != got.s.Keys || p.AllowUnsigned != got.s.AllowUnsigned {
					t.Errorf("%s: policy %+v", svc, p)
				}
			}
		})
	}
	for _, svc := range []string{"ingest", "aggregator"} {
		vars := config.Variables(svc)
		for _, v := range []string{"ADJUSTMENT_SIGNING_KEYS", "ADJUSTMENT_SIGNING_KEYS_FILE", "ALLOW_UNSIGNED_ADJUSTMENTS"} {
			if !slices.Contains(vars, v) {
				t.Errorf("%s does not read %s", svc, v)
			}
		}
	}
}
