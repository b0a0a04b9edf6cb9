// Package cli holds what the binaries' operator subcommands share:
// parsing a subcommand's own flags wherever they stand, and naming the
// person who runs a command for audit trails.
//
// Invariant: nothing here touches a database or the network.
package cli

import (
	"fmt"
	"os"
	"os/user"
	"slices"
	"strings"
)

// Flags pulls a subcommand's own flags (--name value, --name=value, or
// --name for booleans) out of args, wherever they stand; what remains are
// positional arguments.
func Flags(args []string, valued, boolean []string) (map[string]string, []string, error) {
	flags := map[string]string{}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			rest = append(rest, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case slices.Contains(boolean, name):
			flags[name] = "true"
		case slices.Contains(valued, name):
			if !hasVal {
				if i+1 >= len(args) {
					return nil, nil, fmt.Errorf("--%s needs a value", name)
				}
				i++
				val = args[i]
			}
			flags[name] = val
		default:
			return nil, nil, fmt.Errorf("unknown flag %s", a)
		}
	}
	return flags, rest, nil
}

// Own is a subcommand's own flags: Valued ones take a value, Boolean ones
// do not. Every other flag on its command line is a service setting.
type Own struct{ Valued, Boolean []string }

// Parse pulls o's flags out of args, wherever they stand (see Flags).
func (o Own) Parse(args []string) (map[string]string, []string, error) {
	return Flags(args, o.Valued, o.Boolean)
}

// Has reports whether name is one of o's flags.
func (o Own) Has(name string) bool {
	return slices.Contains(o.Valued, name) || slices.Contains(o.Boolean, name)
}

// SplitOwn is SplitSettings for a binary whose subcommands own the flags
// in own: every other flag is a setting.
func SplitOwn(args []string, own ...Own) (settingArgs, rest []string) {
	return SplitSettings(args, func(name string) bool {
		for _, o := range own {
			if o.Has(name) {
				return false
			}
		}
		return true
	})
}

// Actor names whoever runs the command: user@host.
func Actor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// SplitSettings separates the service settings flags (those the settings
// FlagSet knows, given by name, each taking a value) from the rest, so
// `biller dlq replay 7 -database-url X` works in any order.
func SplitSettings(args []string, settings func(name string) bool) (settingArgs, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, _, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && settings(name) {
			settingArgs = append(settingArgs, a)
			if !hasVal && i+1 < len(args) {
				i++
				settingArgs = append(settingArgs, args[i])
			}
			continue
		}
		rest = append(rest, a)
	}
	return settingArgs, rest
}
