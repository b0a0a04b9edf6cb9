package testkit_test

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/usagemeter/metering/"

// testHelpers are the packages whose non-test files may import testing.
var testHelpers = []string{
	"internal/testkit/pgtest",
	"internal/testkit/metertruth",
	"internal/testkit/kafkatest",
	"internal/testkit/stripemock",
	"internal/testkit/testpki",
	"internal/testkit/stack/stacktest",
}

// TestToolingStaysApart: no product package imports test or dev tooling,
// only test helpers import testing outside tests, and no binary links it.
func TestToolingStaysApart(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	list := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("go", append([]string{"list"}, args...)...)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list %v: %v", args, err)
		}
		return string(out)
	}
	for _, line := range strings.Split(strings.TrimSpace(list("-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./...")), "\n") {
		fields := strings.Fields(line)
		pkg, imports := strings.TrimPrefix(fields[0], module), fields[1:]
		tooling := strings.HasPrefix(pkg, "internal/testkit") || strings.HasPrefix(pkg, "tools/")
		for _, imp := range imports {
			if imp == "testing" && !slices.Contains(testHelpers, pkg) {
				t.Errorf("%s imports testing outside its tests; a test helper belongs in internal/testkit", pkg)
			}
			if !tooling && strings.HasPrefix(imp, module+"internal/testkit") {
				t.Errorf("product package %s imports %s outside its tests", pkg, imp)
			}
		}
	}
	for _, bin := range strings.Fields(list("./cmd/...", "./tools/...")) {
		if slices.Contains(strings.Fields(list("-deps", bin)), "testing") {
			t.Errorf("%s links testing", bin)
		}
	}
}
