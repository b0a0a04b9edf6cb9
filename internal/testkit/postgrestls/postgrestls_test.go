package postgrestls_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/leader"
	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/testkit/stack"
	"github.com/usagemeter/metering/internal/testkit/stack/stacktest"
	"github.com/usagemeter/metering/internal/testkit/testpki"
)

// TestVerifyFull starts a Postgres cluster with ssl=on, a server
// certificate from a test CA, and client-certificate authentication for
// the postgres role; then opens it the way every service does
// (migrate.OpenPool, which applies the migrations) with sslmode=verify-full.
func TestVerifyFull(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Postgres cluster")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	work := stacktest.TempWork(t, "postgrestls-")
	port, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	pgDir := filepath.Join(work, "postgres")
	script := filepath.Join(root, "scripts", "postgres.sh")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, script, args...)
		cmd.Dir = root
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("postgres.sh %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return strings.TrimSpace(string(out))
	}
	plainURL := run("start", pgDir, strconv.Itoa(port))
	t.Cleanup(func() { _ = exec.Command(script, "stop", pgDir).Run() })
	dataDir := run("datadir", pgDir)

	ca := testpki.MustCA(t, "postgres test CA")
	stranger := testpki.MustCA(t, "a CA nobody trusts")
	clientCA := testpki.MustCA(t, "postgres client CA")
	server := ca.MustIssue(t, "localhost", "127.0.0.1")
	client := clientCA.MustIssue(t, "postgres") // cert auth maps the common name to the role
	writeServerFile := func(name string, data []byte) {
		t.Helper()
		path := testpki.MustWriteFile(t, dataDir, name, data)
		if os.Getuid() == 0 { // the server runs as postgres and wants its key private
			u, err := user.Lookup("postgres")
			if err != nil {
				t.Fatal(err)
			}
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			if err := os.Chown(path, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	writeServerFile("server.crt", server.CertPEM)
	writeServerFile("server.key", server.KeyPEM)
	writeServerFile("client-ca.crt", clientCA.CertPEM)
	writeServerFile("pg_hba.conf", []byte(strings.Join([]string{
		"local all all trust",
		"hostnossl all all 127.0.0.1/32 trust", // the test's own setup connection
		"hostssl all postgres 127.0.0.1/32 cert",
		"hostssl all all 127.0.0.1/32 trust",
		"",
	}, "\n")))

	admin, err := pgx.Connect(ctx, plainURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for _, sql := range []string{
		"ALTER SYSTEM SET ssl = on",
		"ALTER SYSTEM SET ssl_ca_file = 'client-ca.crt'",
		"CREATE ROLE metering_tls LOGIN SUPERUSER",
		"SELECT pg_reload_conf()",
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	dir := t.TempDir()
	file := func(name string, data []byte) string { return testpki.MustWriteFile(t, dir, name, data) }
	caFile, strangerFile := file("ca.pem", ca.CertPEM), file("stranger.pem", stranger.CertPEM)
	certFile, keyFile := file("client.pem", client.CertPEM), file("client-key.pem", client.KeyPEM)
	dbURL := func(role, host string, params map[string]string) string {
		q := url.Values{}
		for k, v := range params {
			q.Set(k, v)
		}
		return (&url.URL{Scheme: "postgres", User: url.User(role), Host: fmt.Sprintf("%s:%d", host, port), Path: "/postgres", RawQuery: q.Encode()}).String()
	}

	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name    string
		url     string
		wantErr string // "" means the product's Open connects over TLS
	}{
		{"verify-full", dbURL("metering_tls", "localhost", map[string]string{"sslmode": "verify-full", "sslrootcert": caFile}), ""},
		{"verify-full to an IP address", dbURL("metering_tls", "127.0.0.1", map[string]string{"sslmode": "verify-full", "sslrootcert": caFile}), ""},
		{"verify-full with a client certificate", dbURL("postgres", "localhost", map[string]string{"sslmode": "verify-full", "sslrootcert": caFile, "sslcert": certFile, "sslkey": keyFile}), ""},
		{"untrusted CA", dbURL("metering_tls", "localhost", map[string]string{"sslmode": "verify-full", "sslrootcert": strangerFile}), "certificate signed by unknown authority"},
		{"client certificate required", dbURL("postgres", "localhost", map[string]string{"sslmode": "verify-full", "sslrootcert": caFile}), "certificate"},
	}
	// pg_reload_conf signals the server; the new settings apply a moment
	// later.
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, tests[0].url)
		if err == nil {
			conn.Close(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Postgres does not take TLS connections 10 s after ssl=on: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool, err := migrate.OpenPool(ctx, tt.url, 0, log)
			if tt.wantErr != "" {
				if err == nil {
					pool.Close()
					t.Fatalf("Open connected; want an error mentioning %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Open: %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer pool.Close()
			var ssl bool
			var version string
			if err := pool.QueryRow(ctx, `SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&ssl, &version); err != nil {
				t.Fatal(err)
			}
			if !ssl {
				t.Fatal("the session is not encrypted")
			}
			var applied int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&applied); err != nil {
				t.Fatalf("the migrations did not run over TLS: %v", err)
			}
			// The leader elector opens its own connection from a copy
			// of the pool's settings: it must be encrypted too.
			lctx, stop := context.WithTimeout(ctx, 30*time.Second)
			defer stop()
			var leaderSSL bool
			err = leader.New(pool, "tls-check", leader.Options{Interval: 100 * time.Millisecond}).Run(lctx, func(context.Context) error {
				defer stop()
				return admin.QueryRow(lctx, `SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
					WHERE a.application_name = 'metering leader tls-check'`).Scan(&leaderSSL)
			})
			if err != nil || !leaderSSL {
				t.Fatalf("the leader elector's connection: encrypted %v, err %v", leaderSSL, err)
			}
			t.Logf("%s: %s, %d migrations applied, the leader's connection encrypted too", tt.name, version, applied)
		})
	}
}
