package cli_test

import (
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/cli"
)

// FuzzFlags: parsing never panics, and every argument ends up exactly once
// as a flag, a flag's value or a positional argument.
func FuzzFlags(f *testing.F) {
	f.Add("replay 7 --actor bob --all")
	f.Add("--note=a=b --actor")
	f.Add("-- - --all=x")
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Fields(line)
		flags, rest, err := cli.Flags(args, []string{"actor", "note"}, []string{"all"})
		if err != nil {
			return
		}
		consumed := len(rest)
		for k, v := range flags {
			consumed++
			if k != "all" && !strings.Contains(line, "--"+k+"=") && !strings.Contains(line, "-"+k+"=") && v != "" {
				consumed++ // the value was its own argument
			}
		}
		if consumed > len(args) {
			t.Fatalf("%q: more parsed (%v %v) than given", line, flags, rest)
		}
	})
}
