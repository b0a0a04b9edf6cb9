package cli_test

import (
	"fmt"
	"testing"

	"github.com/usagemeter/metering/internal/cli"
)

func TestFlags(t *testing.T) {
	tests := []struct {
		args      []string
		wantFlags string
		wantRest  string
		wantErr   bool
	}{
		{[]string{"7", "--actor", "bob", "8", "--all"}, "map[actor:bob all:true]", "[7 8]", false},
		{[]string{"--note=closed account", "9"}, "map[note:closed account]", "[9]", false},
		{[]string{"--actor"}, "", "", true},
		{[]string{"--bogus"}, "", "", true},
	}
	for _, tt := range tests {
		flags, rest, err := cli.Flags(tt.args, []string{"actor", "note"}, []string{"all"})
		if (err != nil) != tt.wantErr {
			t.Fatalf("%v: err %v", tt.args, err)
		}
		if err == nil && (fmt.Sprint(flags) != tt.wantFlags || fmt.Sprint(rest) != tt.wantRest) {
			t.Errorf("%v: %v %v", tt.args, flags, rest)
		}
	}
}

func TestSplitSettings(t *testing.T) {
	settings := func(n string) bool { return n == "database-url" || n == "log-level" }
	s, rest := cli.SplitSettings([]string{"replay", "7", "-database-url", "postgres://x", "--all", "-log-level=debug"}, settings)
	if fmt.Sprint(s) != "[-database-url postgres://x -log-level=debug]" || fmt.Sprint(rest) != "[replay 7 --all]" {
		t.Fatalf("%v %v", s, rest)
	}
}

func TestSplitOwn(t *testing.T) {
	dlq := cli.Own{Valued: []string{"actor"}, Boolean: []string{"all"}}
	rebuild := cli.Own{Valued: []string{"from"}}
	s, rest := cli.SplitOwn([]string{"replay", "--all", "-database-url", "postgres://x", "--from", "T", "--actor=bob"}, dlq, rebuild)
	if fmt.Sprint(s) != "[-database-url postgres://x]" || fmt.Sprint(rest) != "[replay --all --from T --actor=bob]" {
		t.Fatalf("%v %v", s, rest)
	}
}
