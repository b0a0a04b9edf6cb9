package config_test

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/config"
)

// TestAdminKeyNeverOnTheCommandLine: the bootstrap admin key comes from
// ADMIN_API_KEY or the file ADMIN_API_KEY_FILE names, in ingest and in the
// biller alike; there is no flag that would show it in ps.
func TestAdminKeyNeverOnTheCommandLine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "admin-key")
	if err := os.WriteFile(file, []byte("  from-a-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    string
		wantErr string
	}{
		{"none", nil, nil, "", ""},
		{"env", map[string]string{"ADMIN_API_KEY": "from-env"}, nil, "from-env", ""},
		{"file, trimmed", map[string]string{"ADMIN_API_KEY_FILE": file}, nil, "from-a-file", ""},
		{"flag refused", nil, []string{"-admin-api-key", "on-the-command-line"}, "", "admin-api-key"},
		{"file flag refused", nil, []string{"-admin-api-key-file", file}, "", "admin-api-key-file"},
		{"both", map[string]string{"ADMIN_API_KEY": "a", "ADMIN_API_KEY_FILE": file}, nil, "", "not both"},
		{"missing file", map[string]string{"ADMIN_API_KEY_FILE": filepath.Join(dir, "nope")}, nil, "", "ADMIN_API_KEY_FILE"},
		{"empty file", map[string]string{"ADMIN_API_KEY_FILE": empty}, nil, "", "is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ic, _, ierr := config.LoadIngest("ingest", tt.args, env(tt.env), io.Discard)
			bc, _, berr := config.LoadBiller("biller", tt.args, env(tt.env), io.Discard)
			for svc, got := range map[string]struct {
				key string
				err error
			}{"ingest": {ic.AdminAPIKey, ierr}, "biller": {bc.AdminAPIKey, berr}} {
				if tt.wantErr != "" {
					if got.err == nil || !strings.Contains(got.err.Error(), tt.wantErr) {
						t.Errorf("%s: error %v, want one naming %q", svc, got.err, tt.wantErr)
					}
					continue
				}
				if got.err != nil || got.key != tt.want {
					t.Errorf("%s: key %q, %v; want %q", svc, got.key, got.err, tt.want)
				}
			}
		})
	}
	for _, svc := range []string{"ingest", "biller"} {
		vars := strings.Join(config.Variables(svc), " ")
		if !strings.Contains(vars, "ADMIN_API_KEY ") || !strings.Contains(vars, "ADMIN_API_KEY_FILE") {
			t.Errorf("%s reads %s; want ADMIN_API_KEY and ADMIN_API_KEY_FILE", svc, vars)
		}
	}
}
