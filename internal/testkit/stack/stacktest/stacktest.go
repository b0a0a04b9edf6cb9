// Package stacktest holds the stack's helpers that take a testing.TB, kept
// apart so that package stack, which the chaos and benchmark binaries
// link, does not import testing. Test and dev tooling, not product.
package stacktest

import (
	"os"
	"testing"

	"github.com/usagemeter/metering/internal/testkit/stack"
)

// TempWork makes a work directory for a test's stack (stack.MakeWork) and
// removes it when the test ends.
func TempWork(tb testing.TB, prefix string) string {
	tb.Helper()
	work, err := stack.MakeWork("", prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(work) })
	return work
}
