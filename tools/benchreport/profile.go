package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// profiled are the processes of the pipeline benchmark that are built
// with the profiling hook: the package each binary is built from.
var profiled = map[string]string{
	"ingest":     "cmd/ingest",
	"aggregator": "cmd/aggregator",
	"biller":     "cmd/biller",
	"devbroker":  "tools/devbroker",
}

// profileHook is compiled into each profiled binary through `go build
// -overlay`, never into the product's own builds: when
// METERING_PROFILE_SOCKETS names a directory, the process serves, on the
// unix socket NAME.sock there (NAME being its binary's name),
// /start (begin a CPU profile), /stop (end it and answer with it) and
// /allocs (the allocation profile since the process started).
const profileHook = `package main

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
)

func init() {
	dir := os.Getenv("METERING_PROFILE_SOCKETS")
	if dir == "" {
		return
	}
	path := filepath.Join(dir, filepath.Base(os.Args[0])+".sock")
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		os.Stderr.WriteString("profiling hook: " + err.Error() + "\n")
		return
	}
	var mu sync.Mutex
	var cpu bytes.Buffer
	mux := http.NewServeMux()
	mux.HandleFunc("/start", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		cpu.Reset()
		if err := pprof.StartCPUProfile(&cpu); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
		}
	})
	mux.HandleFunc("/stop", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		pprof.StopCPUProfile()
		_, _ = w.Write(cpu.Bytes())
	})
	mux.HandleFunc("/allocs", func(w http.ResponseWriter, r *http.Request) {
		_ = pprof.Lookup("allocs").WriteTo(w, 0)
	})
	go func() { _ = http.Serve(ln, mux) }()
}
`

// profiler builds the pipeline's binaries with profileHook and collects
// their profiles into dir.
type profiler struct {
	dir, sockets string
}

// setupProfiling writes the hook and its overlay under work, and sets
// GOFLAGS and METERING_PROFILE_SOCKETS in this process's environment,
// which the stack's build and its processes inherit.
func setupProfiling(root, work, dir string) (*profiler, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("making %s: %w", dir, err)
	}
	// A short directory of its own: a unix socket's path is limited to
	// 108 bytes.
	sockets, err := os.MkdirTemp("", "mprof-")
	if err != nil {
		return nil, err
	}
	hook := filepath.Join(work, "profile_hook.go")
	if err := os.WriteFile(hook, []byte(profileHook), 0o644); err != nil {
		return nil, err
	}
	replace := map[string]string{}
	for _, pkg := range profiled {
		replace[filepath.Join(root, pkg, "zz_profile_hook.go")] = hook
	}
	b, err := json.Marshal(map[string]any{"Replace": replace})
	if err != nil {
		return nil, err
	}
	overlay := filepath.Join(work, "overlay.json")
	if err := os.WriteFile(overlay, b, 0o644); err != nil {
		return nil, err
	}
	flags := strings.TrimSpace(os.Getenv("GOFLAGS") + " -overlay=" + overlay)
	if err := os.Setenv("GOFLAGS", flags); err != nil {
		return nil, err
	}
	if err := os.Setenv("METERING_PROFILE_SOCKETS", sockets); err != nil {
		return nil, err
	}
	return &profiler{dir: dir, sockets: sockets}, nil
}

func (p *profiler) close() { _ = os.RemoveAll(p.sockets) }

func (p *profiler) client(name string) *http.Client {
	sock := filepath.Join(p.sockets, name+".sock")
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
}

func (p *profiler) get(ctx context.Context, name, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+name+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client(name).Do(req)
	if err != nil {
		return nil, fmt.Errorf("profiling %s (%s): %w", name, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("profiling %s (%s): %w", name, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("profiling %s (%s): %d %s", name, path, resp.StatusCode, b)
	}
	return b, nil
}

// start begins a CPU profile in every profiled process.
func (p *profiler) start(ctx context.Context) error {
	for name := range profiled {
		if _, err := p.get(ctx, name, "/start"); err != nil {
			return err
		}
	}
	return nil
}

// collect ends the CPU profiles and writes NAME.cpu.pprof and
// NAME.allocs.pprof for every profiled process.
func (p *profiler) collect(ctx context.Context) error {
	for name := range profiled {
		for _, k := range []struct{ path, file string }{{"/stop", name + ".cpu.pprof"}, {"/allocs", name + ".allocs.pprof"}} {
			b, err := p.get(ctx, name, k.path)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(p.dir, k.file), b, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}
