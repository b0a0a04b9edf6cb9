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

	"github.com/usagemeter/metering/internal/pgtest"
)

// TestMakeRun runs the local stack exactly as `make run` does (the script,
// with its embedded broker, Stripe test server and the three services),
// posts an event, sees it in /v1/usage, then sends SIGINT as Ctrl-C does
// and checks that every process it started is gone. It uses the contract
// ports (8080-8082, 9092, 12111), so nothing else may hold them.
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
	cmd := exec.Command("make", "run")
	cmd.Env = append(os.Environ(), "DEV_DIR="+dev, "DATABASE_URL="+db.URL, "SYNC_INTERVAL=1s")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		}
	})
	// The scanner goroutine owns the output until it ends (EOF once every
	// process holding the pipe is gone); the test reads it under the lock
	// and waits for the goroutine before the final check and cmd.Wait.
	ready := make(chan string, 1)
	scanned := make(chan struct{})
	var output lockedBuilder
	go func() {
		defer close(scanned)
		defer close(ready)
		sc := bufio.NewScanner(out)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			output.WriteLine(line)
			if k, ok := strings.CutPrefix(strings.TrimSpace(line), "admin key"); ok && !sent {
				ready <- strings.TrimSpace(k)
				sent = true
			}
		}
	}()
	var key string
	select {
	case k, ok := <-ready:
		if !ok {
			t.Fatalf("make run ended before it was ready:\n%s", output.String())
		}
		key = k
	case <-time.After(3 * time.Minute):
		t.Fatalf("make run not ready after 3 minutes:\n%s", output.String())
	}

	ev := fmt.Sprintf(`{"id":"run-test-1","tenant":"acme","metric":"api_calls","value":42,"time":%q}`, time.Now().UTC().Format(time.RFC3339))
	req, _ := http.NewRequest("POST", "http://127.0.0.1:8080/v1/events", strings.NewReader(ev))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /v1/events: %d %s", resp.StatusCode, body)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest("GET", "http://127.0.0.1:8080/v1/usage?tenant=acme&metric=api_calls&window=day", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), `"total":42`) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the event never reached /v1/usage: %s", body)
		}
		time.Sleep(200 * time.Millisecond)
	}

	pidsText, err := os.ReadFile(filepath.Join(dev, "pids"))
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
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		// Every read of the pipe must finish before Wait closes it.
		<-scanned
		done <- cmd.Wait()
	}()
	select {
	case <-done:
		stopped = true
	case <-ctx.Done():
		t.Fatalf("make run did not stop within a minute of SIGINT:\n%s", output.String())
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("process %d is still running after Ctrl-C", pid)
		}
	}
	if !strings.Contains(output.String(), "stopped.") {
		t.Errorf("no orderly stop:\n%s", output.String())
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
