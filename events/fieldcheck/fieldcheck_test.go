package fieldcheck_test

import (
	"regexp"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/usagemeter/metering/events/fieldcheck"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// validName is the rule of a name, stated independently of Name.
func validName(s string) bool { return nameRE.MatchString(s) && s != "." && s != ".." }

// validText is the rule of text, stated independently of Text: valid
// UTF-8 and no character of Unicode's control category (exactly C0, DEL
// and C1).
func validText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl)
}

func TestName(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"api_calls", ""},
		{"A-z_0.9:x", ""},
		{"...", ""},
		{strings.Repeat("m", 128), ""},
		{"", "is required (1-128 characters of A-Z a-z 0-9 . _ : -)"},
		{strings.Repeat("m", 129), "must be at most 128 characters, got 129"},
		{".", `must not be "."`},
		{"..", `must not be ".."`},
		{"a b", `may contain only A-Z a-z 0-9 . _ : -; found ' ' at byte 1`},
		{"tökens", `may contain only A-Z a-z 0-9 . _ : -; found 'ö' at byte 1`},
		{"a/b", `may contain only A-Z a-z 0-9 . _ : -; found '/' at byte 1`},
		{"a\x00", `may contain only A-Z a-z 0-9 . _ : -; found '\x00' at byte 1`},
	}
	for _, tt := range tests {
		if got := fieldcheck.Name(tt.in); got != tt.want {
			t.Errorf("Name(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestText(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{"plain text, 日本, 🙂, <&>", ""},
		{"\u00a0\u2028\ufffd", ""},
		{"a\x00", "must not contain control characters (found U+0000)"},
		{"\t", "must not contain control characters (found U+0009)"},
		{"\x7f", "must not contain control characters (found U+007F)"},
		{"\u0085", "must not contain control characters (found U+0085)"},
		{"\u009f", "must not contain control characters (found U+009F)"},
		{"\xc3", "must be valid UTF-8"},
		{"a\xff\x00", "must be valid UTF-8"},
	}
	for _, tt := range tests {
		if got := fieldcheck.Text(tt.in); got != tt.want {
			t.Errorf("Text(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	// Every character below U+0100, one at a time.
	for r := rune(0); r < 0x100; r++ {
		s := string(r)
		if got := fieldcheck.Text(s) == ""; got != validText(s) {
			t.Errorf("Text(%U) allows it: %v, want %v", r, got, !got)
		}
	}
}

func TestProperty(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", 129)
	tests := []struct{ key, value, field, msg string }{
		{"region", "eu", "", ""},
		{strings.Repeat("k", 128), strings.Repeat("v", 1024), "", ""},
		{"region", "", "", ""},
		{"", "x", "properties", "keys must not be empty"},
		{long, "x", "properties.kkkkkkkkkkkkkkkk...", "key must be at most 128 bytes"},
		{"a\nb", "x", "properties", `key "a\nb" must not contain control characters (found U+000A)`},
		{"\xc3", "x", "properties", `key "\xc3" must be valid UTF-8`},
		{"k", strings.Repeat("v", 1025), "properties.k", "must be at most 1024 bytes, got 1025"},
		{"k", "\u009f", "properties.k", "must not contain control characters (found U+009F)"},
		// The key is reported first.
		{"", "\x00", "properties", "keys must not be empty"},
	}
	for _, tt := range tests {
		field, msg := fieldcheck.Property("properties", tt.key, tt.value)
		if field != tt.field || msg != tt.msg {
			t.Errorf("Property(%q, %q) = %q, %q; want %q, %q", tt.key, tt.value, field, msg, tt.field, tt.msg)
		}
	}
}

// FuzzChecks holds each check to its rule stated independently.
func FuzzChecks(f *testing.F) {
	for _, s := range []string{"", "a", ".", "..", "a b", "tökens", "\x00", "\u0085", "\xc3", strings.Repeat("m", 129)} {
		f.Add(s, "v")
	}
	f.Fuzz(func(t *testing.T, s, v string) {
		if got := fieldcheck.Name(s) == ""; got != validName(s) {
			t.Fatalf("Name(%q) allows it: %v", s, got)
		}
		if got := fieldcheck.Text(s) == ""; got != validText(s) {
			t.Fatalf("Text(%q) allows it: %v", s, got)
		}
		want := s != "" && len(s) <= fieldcheck.MaxPropertyKeyLen && validText(s) && len(v) <= fieldcheck.MaxPropertyValueLen && validText(v)
		if _, msg := fieldcheck.Property("p", s, v); (msg == "") != want {
			t.Fatalf("Property(%q, %q) = %q, want allowed %v", s, v, msg, want)
		}
	})
}
