package stack

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTicks is the kernel's USER_HZ, the unit of /proc's CPU times.
func clockTicks() int64 {
	if b, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
}

// procTimes reads /proc/pid/stat: the process's own CPU time (user and
// system, every thread) and that of its children it has reaped.
func procTimes(pid int, hz int64) (own, reaped time.Duration, ppid int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	// The command name (field 2) may hold spaces; fields are counted
	// after its closing parenthesis.
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 15 {
		return 0, 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	n := func(i int) int64 { v, _ := strconv.ParseInt(f[i], 10, 64); return v }
	tick := time.Second / time.Duration(hz)
	// f[1] is ppid (field 4); utime, stime, cutime, cstime are fields
	// 14-17, f[11]-f[14].
	return time.Duration(n(11)+n(12)) * tick, time.Duration(n(13)+n(14)) * tick, int(n(1)), nil
}

// CPUTimes returns the CPU time (user and system) each process of the
// stack has used so far: the services by name, the broker as "broker"
// when the stack started one, and the Postgres cluster as "postgres"
// (the postmaster, its live backends, and the backends it has reaped).
func (s *Stack) CPUTimes() (map[string]time.Duration, error) {
	hz := clockTicks()
	out := map[string]time.Duration{}
	procs := map[string]*Proc{}
	for n, p := range s.Procs {
		procs[n] = p
	}
	if s.Broker != nil {
		procs["broker"] = s.Broker
	}
	for n, p := range procs {
		p.mu.Lock()
		cmd := p.cmd
		p.mu.Unlock()
		if cmd == nil {
			continue
		}
		own, _, _, err := procTimes(cmd.Process.Pid, hz)
		if err != nil {
			return nil, err
		}
		out[n] = own
	}
	b, err := os.ReadFile(filepath.Join(s.pgDir, "data", "postmaster.pid"))
	if err != nil {
		return nil, fmt.Errorf("the Postgres cluster's pid: %w", err)
	}
	master, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return nil, fmt.Errorf("the Postgres cluster's pid: %w", err)
	}
	own, reaped, _, err := procTimes(master, hz)
	if err != nil {
		return nil, err
	}
	total := own + reaped
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if own, _, ppid, err := procTimes(pid, hz); err == nil && ppid == master {
			total += own
		}
	}
	out["postgres"] = total
	return out, nil
}
