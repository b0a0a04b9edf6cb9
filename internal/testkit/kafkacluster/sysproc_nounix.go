//go:build !unix

package kafkacluster

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
