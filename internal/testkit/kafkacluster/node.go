package kafkacluster

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// node is one combined broker and controller.
type node struct {
	id             int
	brokerPort     int
	controllerPort int
	securePort     int // the SASL_SSL listener's; 0 without one
	dir            string
	out            *nodeLog

	mu   sync.Mutex
	proc *process // the latest JVM started; nil before the first
}

// process is one JVM; done closes once it has been reaped.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the JVM's exit, set before done closes
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (n *node) addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.brokerPort))
}

func (n *node) config() string { return filepath.Join(n.dir, "server.properties") }

// running returns the node's JVM, or nil when it is not running.
func (n *node) running() *process {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil || n.proc.exited() {
		return nil
	}
	return n.proc
}

func (n *node) pid() int {
	if p := n.running(); p != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

// start runs the JVM in its own process group and reaps it when it
// exits; exited runs then, before the process counts as ended.
func (n *node) start(java string, args []string, exited func(*os.ProcessState)) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil && !n.proc.exited() {
		return fmt.Errorf("kafkacluster: node %d is already running (pid %d)", n.id, n.proc.cmd.Process.Pid)
	}
	cmd := exec.Command(java, args...)
	cmd.Dir = n.dir
	cmd.Stdout = n.out
	cmd.Stderr = n.out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("kafkacluster: starting node %d: %w", n.id, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		exited(cmd.ProcessState)
		close(p.done)
	}()
	n.proc = p
	return nil
}

// kill sends SIGKILL and waits until the JVM is reaped.
func (n *node) kill() error {
	p := n.running()
	if p == nil {
		return fmt.Errorf("kafkacluster: node %d is not running", n.id)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !p.exited() {
		return fmt.Errorf("kafkacluster: killing node %d: %w", n.id, err)
	}
	<-p.done
	return nil
}

// stop sends SIGTERM, then SIGKILL after grace, and waits until the JVM
// is reaped. It says how the JVM ended: "" when it was not running.
func (n *node) stop(grace time.Duration) string {
	p := n.running()
	if p == nil {
		return ""
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return "stopped"
	case <-t.C:
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		return "killed, " + grace.String() + " after SIGTERM,"
	}
}

// exitError describes a JVM that exited on its own, with its last output.
func (n *node) exitError(p *process) error {
	return fmt.Errorf("kafkacluster: node %d exited: %v; its last output:\n%s", n.id, p.err, n.out.tail())
}

// lineLog writes whole lines from several sources to one writer, each
// line prefixed with its source.
type lineLog struct {
	mu sync.Mutex
	w  io.Writer
}

func newLineLog(w io.Writer) *lineLog {
	if w == nil {
		w = io.Discard
	}
	return &lineLog{w: w}
}

// printf writes one progress line.
func (l *lineLog) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "kafkacluster: "+format+"\n", args...)
}

func (l *lineLog) node(i int) *nodeLog {
	return &nodeLog{log: l, prefix: fmt.Sprintf("kafka-%d: ", i)}
}

func (l *lineLog) prefixed(name string) *nodeLog {
	return &nodeLog{log: l, prefix: name + ": "}
}

// tailLines is how many of a node's last lines an error shows.
const tailLines = 40

// nodeLog is one source's writer; it keeps the last tailLines lines.
type nodeLog struct {
	log    *lineLog
	prefix string

	mu      sync.Mutex
	partial []byte
	last    []string
}

func (w *nodeLog) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, b...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		w.last = append(w.last, line)
		if len(w.last) > tailLines {
			w.last = w.last[len(w.last)-tailLines:]
		}
		w.log.mu.Lock()
		_, err := io.WriteString(w.log.w, w.prefix+line+"\n")
		w.log.mu.Unlock()
		if err != nil {
			// The log's reader went away; the broker must go on.
			w.log.mu.Lock()
			w.log.w = io.Discard
			w.log.mu.Unlock()
		}
	}
	return len(b), nil
}

func (w *nodeLog) tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	lines := append(append([]string{}, w.last...), string(w.partial))
	return strings.TrimRight(strings.Join(lines, "\n"), "\n")
}
