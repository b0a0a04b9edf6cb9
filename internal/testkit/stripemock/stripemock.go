// Package stripemock starts stripe-mock (github.com/stripe/stripe-mock
// v0.190.0, which `make test` installs) for contract tests: it validates
// the shape of every request against Stripe's OpenAPI spec.
//
// Invariant: a test that needs stripe-mock fails with what to do when it
// is missing; it never skips.
//
// Test and dev tooling, not product (see internal/testkit): a test helper,
// which may import testing; only tests import it.
package stripemock

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Version is the stripe-mock release that serves every endpoint stripe-go
// v79 uses.
const Version = "v0.190.0"

// Binary returns the path of the installed stripe-mock.
func Binary() (string, error) {
	if p, err := exec.LookPath("stripe-mock"); err == nil {
		return p, nil
	}
	for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(os.Getenv("GOPATH"), "bin"), filepath.Join(os.Getenv("HOME"), "go", "bin")} {
		if dir == "" {
			continue
		}
		if p := filepath.Join(dir, "stripe-mock"); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("stripe-mock is not installed: run `make test`, or `go install github.com/stripe/stripe-mock@%s`", Version)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// Start runs stripe-mock on a free loopback port until tb ends and
// returns its base URL.
func Start(tb testing.TB) string {
	tb.Helper()
	bin, err := Binary()
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	cmd := exec.Command(bin, "-http-addr", addr)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting stripe-mock: %v", err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	base := "http://" + addr
	for range 200 {
		resp, err := http.Get(base + "/v1/billing/meters")
		if err == nil {
			resp.Body.Close()
			return base
		}
		time.Sleep(25 * time.Millisecond)
	}
	tb.Fatalf("stripe-mock did not answer on %s", addr)
	return ""
}
