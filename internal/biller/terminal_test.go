package biller

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestTerminalText: text from Stripe printed by `biller dlq list` cannot
// move the cursor, clear the screen or retitle the terminal, and is cut
// on a rune boundary.
func TestTerminalText(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
		max            int
	}{
		{"plain", "rate limited", "rate limited", 80},
		{"escape sequence", "\x1b[2J\x1b]0;pwned\x07boom", `\x1b[2J\x1b]0;pwned\aboom`, 80},
		{"C1 control", "a\u009bb", `a\u009bb`, 80},
		{"newline", "line1\nline2", `line1\nline2`, 80},
		{"invalid UTF-8", "a\xffb", `a\xffb`, 80},
		{"cut long", strings.Repeat("x", 100), strings.Repeat("x", 77) + "...", 80},
		{"cut on a rune boundary", strings.Repeat("é", 50), strings.Repeat("é", 38) + "...", 80},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := terminalText(tt.in, tt.max)
			if got != tt.want {
				t.Fatalf("terminalText(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if !utf8.ValidString(got) || strings.ContainsAny(got, "\x1b\x07\n\u009b") || len(got) > tt.max {
				t.Fatalf("unsafe or too long: %q", got)
			}
		})
	}
}
