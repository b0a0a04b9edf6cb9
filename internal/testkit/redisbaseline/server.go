// Package redisbaseline is the design users would pick instead of the
// aggregator, measured beside it: Redis counters fed by a Kafka consumer
// group, a Lua script per event (SET NX on the tenant's event id with the
// dedup horizon as TTL; when the id is new, INCRBY on its minute, hour,
// day and month window keys), one pipeline per batch, the offsets
// committed once the pipeline returned. It runs a private redis-server,
// measures the consumer's events/s on a backlog, and runs the kill test
// the aggregator passes (SIGKILLs of the consumer and of redis-server
// while events with resends flow), reporting the under- and over-count
// the Redis totals show against a ground truth it keeps itself.
//
// Invariant: the Lua script is the only writer of the Redis keys it
// reads back, and a kill test's figures compare those keys with the
// ground truth of the events it produced, nothing else.
//
// Test and dev tooling, not product (see internal/testkit): no product
// package imports it, and it does not import testing, since the dev
// binaries under tools/ link it.
package redisbaseline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Persistence is how the private redis-server keeps its data.
type Persistence string

const (
	// Snapshots is Redis's default as Debian ships it (its redis.conf
	// leaves save commented out, so the built-in save points apply): an
	// RDB snapshot after 3600 s with 1 change, 300 s with 100 or 60 s
	// with 10,000; no append-only file.
	Snapshots Persistence = "rdb-default"
	// AppendOnly adds the append-only file, fsynced every second
	// (appendonly yes, appendfsync everysec), what a team that read the
	// persistence page would turn on.
	AppendOnly Persistence = "aof-everysec"
)

// Server is a private redis-server on a loopback port with its data in a
// directory, which can be SIGKILLed and started again on its data.
type Server struct {
	// Addr is host:port.
	Addr        string
	dir         string
	persistence Persistence
	log         io.Writer
	mu          sync.Mutex
	cmd         *exec.Cmd
}

// StartServer starts redis-server (from PATH) with its data in dir, on a
// free loopback port, and returns once it answers PING.
func StartServer(ctx context.Context, dir string, p Persistence, log io.Writer) (*Server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redis-server is not on PATH (Debian's redis-server package): %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("making the Redis data directory: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("finding a free port for Redis: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if log == nil {
		log = io.Discard
	}
	s := &Server{Addr: addr, dir: dir, persistence: p, log: log}
	if err := s.Start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) args() []string {
	_, port, _ := net.SplitHostPort(s.Addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--dir", s.dir, "--daemonize", "no",
		"--save", "3600 1 300 100 60 10000", "--dbfilename", "dump.rdb", "--logfile", "",
		"--protected-mode", "yes", "--appendfilename", "appendonly.aof"}
	if s.persistence == AppendOnly {
		return append(args, "--appendonly", "yes", "--appendfsync", "everysec")
	}
	return append(args, "--appendonly", "no")
}

// Start starts the server on its port and data directory and waits until
// it answers PING (after loading what it had persisted).
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	cmd := exec.Command("redis-server", s.args()...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("starting redis-server: %w", err)
	}
	s.cmd = cmd
	s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := ping(ctx, s.Addr); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redis-server on %s not answering after 30s: %w", s.Addr, err)
		}
		select {
		case <-ctx.Done():
			s.Kill()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ping sends an inline PING and expects +PONG (+LOADING errors are not).
func ping(ctx context.Context, addr string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "+PONG\r\n" {
		return errors.New("answered " + strconv.Quote(string(buf[:n])))
	}
	return nil
}

// Kill sends SIGKILL and reaps the process.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Stop sends SIGTERM (Redis then saves a snapshot) and waits up to 20s,
// then SIGKILL.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
	s.cmd = nil
}

// DataBytes returns the size of what the server persisted (the RDB
// snapshot and the append-only files).
func (s *Server) DataBytes() int64 {
	var n int64
	_ = filepath.WalkDir(s.dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
