// Package stack runs the pipeline as separate processes on private ports
// (a private Postgres cluster, the embedded Kafka broker with a data dir,
// ingest, aggregator and biller), for the chaos run and the benchmarks,
// and lets them be killed, restarted and measured.
//
// Invariant: everything it starts it stops (Stop), and nothing it starts
// listens on a shared or contract port.
//
// Test and dev tooling, not product (see internal/testkit): no product
// package imports it, and it does not import testing, since the dev
// binaries under tools/ link it; its helpers that take a testing.TB are
// in stacktest.
package stack

import (
	"bytes"
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
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// AdminKey is the stack's bootstrap admin key.
const AdminKey = "stack-admin-key"

// AdjustmentSigningKeys are the stack's ADJUSTMENT_SIGNING_KEYS: ingest
// signs adjustments with them and the aggregator verifies them.
const AdjustmentSigningKeys = "stack-1=stack-adjustment-signing-secret-0123456789"

// Services are the three services, in start order.
var Services = []string{"ingest", "aggregator", "biller"}

// Proc is one child process that can be killed and started again.
type Proc struct {
	Name string
	bin  string
	env  []string
	log  io.Writer
	mu   sync.Mutex
	cmd  *exec.Cmd
}

// Start starts the process.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(p.bin)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", p.Name, err)
	}
	p.cmd = cmd
	return nil
}

// Kill sends SIGKILL and reaps the process.
func (p *Proc) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
		p.cmd = nil
	}
}

// Stop sends SIGTERM and waits up to 20s, then SIGKILL.
func (p *Proc) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
	p.cmd = nil
}

// PeakRSS returns the process's peak resident set size in bytes (VmHWM).
func (p *Proc) PeakRSS() (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0, fmt.Errorf("%s is not running", p.Name)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM for %s", p.Name)
}

// Options of a stack.
type Options struct {
	// Root is the repository root; Work a directory for binaries, data
	// and logs, which the postgres user must be able to traverse.
	Root, Work string
	// StripeBase is the Stripe API the biller talks to.
	StripeBase string
	// Brokers, when set, is an existing Kafka cluster (comma separated)
	// the services use instead of the embedded broker, which is then not
	// started (Broker is nil).
	Brokers string
	// Env adds settings per service ("ingest", "aggregator", "biller").
	Env map[string][]string
	// Statements loads pg_stat_statements into the private Postgres (one
	// restart before the services start) and creates the extension in
	// the database, so that a run can say which statements cost what.
	Statements bool
}

// Stack is a running pipeline.
type Stack struct {
	opt       Options
	pgDir     string
	pgPort    int
	DBURL     string
	Brokers   string
	URLs      map[string]string // service → http://127.0.0.1:port
	Broker    *Proc
	Procs     map[string]*Proc
	extra     []string // names of processes started with Spawn
	LogFile   string
	logs      *os.File
	binDir    string
	commonEnv []string
}

// FreePort returns a free loopback port.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// WaitHTTP waits until url answers 200.
func WaitHTTP(ctx context.Context, url string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s", url, d)
}

func (s *Stack) pgctl(args ...string) (string, error) {
	c := exec.Command(filepath.Join(s.opt.Root, "scripts", "postgres.sh"), args...)
	c.Dir = s.opt.Root
	b, err := c.Output()
	return strings.TrimSpace(string(b)), err
}

// Start builds the binaries and starts everything; progress goes to out.
func Start(ctx context.Context, opt Options, out io.Writer) (*Stack, error) {
	s := &Stack{opt: opt, URLs: map[string]string{}, Procs: map[string]*Proc{}, binDir: filepath.Join(opt.Work, "bin")}
	if err := os.MkdirAll(opt.Work, 0o755); err != nil {
		return nil, err
	}
	fmt.Fprintln(out, "building the binaries...")
	build := exec.Command("go", "build", "-o", s.binDir+"/", "./cmd/ingest", "./cmd/aggregator", "./cmd/biller", "./tools/devbroker")
	build.Dir = opt.Root
	if b, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building: %v\n%s", err, b)
	}
	var err error
	if s.pgPort, err = FreePort(); err != nil {
		return nil, err
	}
	s.pgDir = filepath.Join(opt.Work, "postgres")
	fmt.Fprintln(out, "starting a private Postgres cluster...")
	base, err := s.pgctl("start", s.pgDir, strconv.Itoa(s.pgPort))
	if err != nil {
		return nil, fmt.Errorf("starting Postgres: %w", err)
	}
	admin, err := pgxpool.New(ctx, base)
	if err != nil {
		s.Stop()
		return nil, err
	}
	_, err = admin.Exec(ctx, "CREATE DATABASE metering")
	admin.Close()
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("creating the database: %w", err)
	}
	s.DBURL = strings.Replace(base, "/postgres?", "/metering?", 1)
	if opt.Statements {
		if err := s.loadStatements(ctx, base); err != nil {
			s.Stop()
			return nil, err
		}
	}
	ports := map[string]int{}
	for _, n := range append([]string{"kafka"}, Services...) {
		if ports[n], err = FreePort(); err != nil {
			s.Stop()
			return nil, err
		}
	}
	s.Brokers = fmt.Sprintf("127.0.0.1:%d", ports["kafka"])
	if opt.Brokers != "" {
		s.Brokers = opt.Brokers
	}
	s.LogFile = filepath.Join(opt.Work, "services.log")
	if s.logs, err = os.Create(s.LogFile); err != nil {
		s.Stop()
		return nil, err
	}
	s.commonEnv = []string{"DATABASE_URL=" + s.DBURL, "KAFKA_BROKERS=" + s.Brokers, "LOG_LEVEL=warn", "KAFKA_PARTITIONS=4", "SHUTDOWN_TIMEOUT=20s"}
	if opt.Brokers == "" {
		s.Broker = &Proc{Name: "broker", bin: filepath.Join(s.binDir, "devbroker"), log: s.logs,
			env: []string{"KAFKA_ADDR=" + s.Brokers, "DATA_DIR=" + filepath.Join(opt.Work, "kafka"), "LOG_LEVEL=warn"}}
	}
	defaults := map[string][]string{
		"ingest": {"ADMIN_API_KEY=" + AdminKey, "ADJUSTMENT_SIGNING_KEYS=" + AdjustmentSigningKeys, "PUBLISH_TIMEOUT=3s", "RATE_LIMIT_KEY_EVENTS=10000000", "RATE_LIMIT_KEY_BURST=20000000",
			"RATE_LIMIT_IP_REQUESTS=1000000", "RATE_LIMIT_IP_BURST=2000000", "MAX_INFLIGHT_EVENTS=200000"},
		"aggregator": {"ADJUSTMENT_SIGNING_KEYS=" + AdjustmentSigningKeys, "SESSION_TIMEOUT=1s", "BATCH_WAIT=20ms"},
		"biller":     {"ADMIN_API_KEY=" + AdminKey, "STRIPE_API_KEY=sk_test_stack", "STRIPE_API_BASE=" + opt.StripeBase, "STRIPE_RATE_LIMIT=2000"},
	}
	for _, n := range Services {
		s.URLs[n] = fmt.Sprintf("http://127.0.0.1:%d", ports[n])
		env := append([]string{fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", ports[n])}, defaults[n]...)
		env = append(env, s.commonEnv...)
		env = append(env, opt.Env[n]...) // later entries win
		s.Procs[n] = &Proc{Name: n, bin: filepath.Join(s.binDir, n), log: s.logs, env: env}
	}
	fmt.Fprintln(out, "starting the broker and the three services...")
	if s.Broker != nil {
		if err := s.Broker.Start(); err != nil {
			s.Stop()
			return nil, err
		}
	}
	for _, n := range Services {
		if err := s.Procs[n].Start(); err != nil {
			s.Stop()
			return nil, err
		}
		if err := WaitHTTP(ctx, s.URLs[n]+"/healthz", time.Minute); err != nil {
			s.Stop()
			return nil, fmt.Errorf("%s: %w (see %s)", n, err, s.LogFile)
		}
	}
	return s, nil
}

// Spawn starts one more process of service ("aggregator", say) as name,
// with the settings of that service plus env (later entries win) and its
// own HTTP port, and returns it once it answers /healthz. Stop stops it.
func (s *Stack) Spawn(ctx context.Context, name, service string, env ...string) (*Proc, error) {
	tmpl, ok := s.Procs[service]
	if !ok {
		return nil, fmt.Errorf("no service %q", service)
	}
	if _, taken := s.Procs[name]; taken {
		return nil, fmt.Errorf("a process named %q exists", name)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	penv := append(append(append([]string(nil), tmpl.env...), env...), fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", port))
	p := &Proc{Name: name, bin: tmpl.bin, env: penv, log: s.logs}
	if err := p.Start(); err != nil {
		return nil, err
	}
	s.Procs[name] = p
	s.URLs[name] = url
	s.extra = append(s.extra, name)
	if err := WaitHTTP(ctx, url+"/healthz", time.Minute); err != nil {
		return p, fmt.Errorf("%s: %w (see %s)", name, err, s.LogFile)
	}
	return p, nil
}

// Put sends an admin PUT (plans, tenants, meters) to ingest with the
// admin key; 200 and 201 are success.
func (s *Stack) Put(ctx context.Context, path, body string) error {
	req, err := http.NewRequestWithContext(ctx, "PUT", s.URLs["ingest"]+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+AdminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("PUT %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("PUT %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}

// loadStatements preloads pg_stat_statements (ALTER SYSTEM, then a
// restart) and creates the extension in the stack's database.
func (s *Stack) loadStatements(ctx context.Context, base string) error {
	admin, err := pgxpool.New(ctx, base)
	if err != nil {
		return err
	}
	_, err = admin.Exec(ctx, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
	admin.Close()
	if err != nil {
		return fmt.Errorf("preloading pg_stat_statements: %w", err)
	}
	if err := s.RestartPostgres(); err != nil {
		return fmt.Errorf("restarting Postgres with pg_stat_statements: %w", err)
	}
	db, err := pgxpool.New(ctx, s.DBURL)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		return fmt.Errorf("creating pg_stat_statements: %w", err)
	}
	return nil
}

// RestartPostgres stops and starts the Postgres cluster.
func (s *Stack) RestartPostgres() error {
	_, _ = s.pgctl("stop", s.pgDir)
	_, err := s.pgctl("start", s.pgDir, strconv.Itoa(s.pgPort))
	return err
}

// Bin returns the path of a built binary.
func (s *Stack) Bin(name string) string { return filepath.Join(s.binDir, name) }

// Env returns the settings every service shares (database, brokers).
func (s *Stack) Env() []string { return append([]string(nil), s.commonEnv...) }

// Stop stops every process and the Postgres cluster.
func (s *Stack) Stop() {
	for _, n := range s.extra {
		s.Procs[n].Stop()
	}
	for i := len(Services) - 1; i >= 0; i-- {
		if p := s.Procs[Services[i]]; p != nil {
			p.Stop()
		}
	}
	if s.Broker != nil {
		s.Broker.Stop()
	}
	if s.pgDir != "" {
		_, _ = s.pgctl("stop", s.pgDir)
	}
	if s.logs != nil {
		_ = s.logs.Close()
	}
}

// MakeWork makes a work directory for a stack under parent (the system's
// temporary directory when empty). The private Postgres runs as the
// postgres user when the caller runs as root, so the directory must be
// traversable by others. Tests use stacktest.TempWork, which removes it.
func MakeWork(parent, prefix string) (string, error) {
	work, err := os.MkdirTemp(parent, prefix)
	if err != nil {
		return "", err
	}
	if err := os.Chmod(work, 0o755); err != nil {
		os.RemoveAll(work)
		return "", err
	}
	return work, nil
}
