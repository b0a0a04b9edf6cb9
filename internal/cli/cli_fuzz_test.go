package cli_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
)

// FuzzRun: parsing a command line never panics, and never yields more
// positional arguments than it was given.
func FuzzRun(f *testing.F) {
	f.Add("7 --actor bob --all")
	f.Add("--note=a=b --actor")
	f.Add("-- - --all=x")
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Fields(line)
		var got string
		var positional []string
		cmds := []cli.Command[config.Aggregator]{cli.New("x", func(_ context.Context, _ cli.Env[config.Aggregator], f listFlags, rest []string) error {
			got, positional = fmt.Sprint(f), rest
			return nil
		})}
		env := cli.Env[config.Aggregator]{Log: slog.New(slog.DiscardHandler), Out: io.Discard}
		if err := cli.Run(context.Background(), cmds, "x", env, args); err != nil {
			return
		}
		if len(positional) > len(args) {
			t.Fatalf("%q: more parsed (%s %v) than given", line, got, positional)
		}
	})
}
