package metering_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/testkit/pgtest"
)

// TestMakeRun runs the local stack exactly as `make run` does (the script,
// with its embedded broker, Stripe test server and the three services),
// posts an event, sees it in /v1/usage, revokes the bootstrap admin key,
// then sends SIGINT as Ctrl-C does and checks that every process it
// started is gone. A second `make run` on the same data must come up with
// a new admin key (the saved one is refused for good) and still show the
// event. It uses the contract ports (8080-8082, 9092, 12111), so nothing
// else may hold them.
func TestMakeRun(t *testing.T) {
	for _, port := range []int{8080, 8081, 8082, 9092, 12111} {
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
			t.Fatalf("port %d is taken (is a `make run` already running?): %v", port, err)
		} else {
			ln.Close()
		}
	}
	db := pgtest.NewEmpty(t)
	dev := t.TempDir()

	run := startMakeRun(t, dev, db.URL)
	ev := fmt.Sprintf(`{"id":"run-test-1","tenant":"acme","metric":"api_calls","value":42,"time":%q}`, time.Now().UTC().Format(time.RFC3339))
	if status, body := call(t, "POST", "/v1/events", run.key, ev); status != http.StatusAccepted {
		t.Fatalf("POST /v1/events: %d %s", status, body)
	}
	waitUsage(t, run.key, `"total":42`)
	if status, body := call(t, "DELETE", "/v1/admin/keys/bootstrap", run.key, ""); status != http.StatusNoContent {
		t.Fatalf("DELETE /v1/admin/keys/bootstrap: %d %s", status, body)
	}
	run.stop(t)

	again := startMakeRun(t, dev, db.URL)
	if again.key == run.key {
		t.Fatalf("the second run kept the revoked admin key:\n%s", again.output.String())
	}
	if !strings.Contains(again.output.String(), "the saved admin key was revoked") {
		t.Errorf("the second run did not say why its admin key changed:\n%s", again.output.String())
	}
	waitUsage(t, again.key, `"total":42`)
	again.stop(t)
}

// makeRun is one `make run` in its own process group.
type makeRun struct {
	cmd     *exec.Cmd
	key     string
	output  *lockedBuilder
	scanned chan struct{}
	dev     string
	onStop  func()
}

// startMakeRun starts `make run` with DEV_DIR=dev and waits until it
// prints its admin key.
func startMakeRun(t *testing.T, dev, databaseURL string) *makeRun {
	t.Helper()
	cmd := exec.Command("make", "run")
	cmd.Env = append(os.Environ(), "DEV_DIR="+dev, "DATABASE_URL="+databaseURL, "SYNC_INTERVAL=1s")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &makeRun{cmd: cmd, output: &lockedBuilder{}, scanned: make(chan struct{}), dev: dev}
	stopped := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-stopped:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-r.scanned
			_ = cmd.Wait()
		}
	})
	// The scanner goroutine owns the output until it ends (EOF once every
	// process holding the pipe is gone); the test reads it under the lock
	// and waits for the goroutine before the final check and cmd.Wait.
	ready := make(chan string, 1)
	go func() {
		defer close(r.scanned)
		defer close(ready)
		sc := bufio.NewScanner(out)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			r.output.WriteLine(line)
			if k, ok := strings.CutPrefix(strings.TrimSpace(line), "admin key"); ok && !sent {
				ready <- strings.TrimSpace(k)
				sent = true
			}
		}
	}()
	select {
	case k, ok := <-ready:
		if !ok {
			t.Fatalf("make run ended before it was ready:\n%s", r.output.String())
		}
		r.key = k
	case <-time.After(3 * time.Minute):
		t.Fatalf("make run not ready after 3 minutes:\n%s", r.output.String())
	}
	r.onStop = func() { close(stopped) }
	return r
}

// stop sends SIGINT as Ctrl-C does and checks that every process the run
// started is gone.
func (r *makeRun) stop(t *testing.T) {
	t.Helper()
	pidsText, err := os.ReadFile(filepath.Join(r.dev, "pids"))
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(pidsText)) {
		n, _ := strconv.Atoi(f)
		pids = append(pids, n)
	}
	if len(pids) != 5 {
		t.Fatalf("make run started %d processes, want 5 (broker, Stripe test server, three services): %v", len(pids), pids)
	}
	// Ctrl-C: SIGINT to the terminal's process group.
	if err := syscall.Kill(-r.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		// Every read of the pipe must finish before Wait closes it.
		<-r.scanned
		done <- r.cmd.Wait()
	}()
	select {
	case <-done:
		r.onStop()
	case <-ctx.Done():
		t.Fatalf("make run did not stop within a minute of SIGINT:\n%s", r.output.String())
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("process %d is still running after Ctrl-C", pid)
		}
	}
	if !strings.Contains(r.output.String(), "stopped.") {
		t.Errorf("no orderly stop:\n%s", r.output.String())
	}
}

// call sends one request to the run's ingest and returns status and body.
func call(t *testing.T, method, path, key, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://127.0.0.1:8080"+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitUsage waits up to 30 s for acme's api_calls usage to contain want.
func waitUsage(t *testing.T, key, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, body := call(t, "GET", "/v1/usage?tenant=acme&metric=api_calls&window=day", key, "")
		if status == http.StatusOK && strings.Contains(body, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage never showed %s: %d %s", want, status, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// lockedBuilder is a strings.Builder safe for one writer goroutine and
// concurrent readers.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) WriteLine(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s)
	l.b.WriteByte('\n')
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
