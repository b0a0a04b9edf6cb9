package kafkacluster

import "syscall"

// sysProcAttr puts a node in its own process group, so a terminal's Ctrl-C
// reaches only the program that started it (which then stops it), and has
// the kernel SIGKILL it when that program dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
