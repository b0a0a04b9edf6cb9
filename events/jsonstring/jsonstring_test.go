package jsonstring_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/usagemeter/metering/events/jsonstring"
)

// samples holds every class of byte and character the styles treat
// apart: plain text, each short escape, the other C0 controls, DEL and
// C1, HTML's special characters, invalid bytes, U+2028 and U+2029, and
// U+FFFD itself.
var samples = []string{
	"", "gpt-4", `a"b\c`, "\b\f\n\r\t", "\x00\x01\x1f", "\x7f\u0080\u009f", "<&>",
	"\xff", "a\xc3", "\xe2\x80", "\u2028\u2029", "x\u2028y", "\ufffd", "tökens 日本 🙂",
	strings.Repeat("v", 1024), "\"\"\\\\",
}

// encodingJSON is what encoding/json writes for s with HTML escaping off.
func encodingJSON(t testing.TB, s string) string {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// TestStdIsEncodingJSON: Std writes exactly encoding/json's bytes, and
// Len says how many.
func TestStdIsEncodingJSON(t *testing.T) {
	t.Parallel()
	for _, s := range samples {
		got := string(jsonstring.Std.Append(nil, s))
		if want := encodingJSON(t, s); got != want {
			t.Errorf("Std.Append(%q) = %s, want %s", s, got, want)
		}
		if n := jsonstring.Std.Len(s); n != len(got) {
			t.Errorf("Std.Len(%q) = %d, want %d", s, n, len(got))
		}
	}
}

// TestWire: Wire writes the event contract's form (\b and \f as \u00xx,
// line separators as they are), which reads back as Std's does, and Len
// says how many bytes.
func TestWire(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"gpt-4", `"gpt-4"`},
		{`a"b\c`, `"a\"b\\c"`},
		{"\b\f\n\r\t", `"\u0008\u000c\n\r\t"`},
		{"\x00\x1f\x7f", `"\u0000\u001f` + "\x7f" + `"`},
		{"<&>", `"<&>"`},
		{"a\xffb", `"a\ufffdb"`},
		{"x\u2028y\u2029", "\"x\u2028y\u2029\""},
	}
	for _, tt := range tests {
		if got := string(jsonstring.Wire.Append(nil, tt.in)); got != tt.want {
			t.Errorf("Wire.Append(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
	for _, s := range samples {
		w := jsonstring.Wire.Append(nil, s)
		if n := jsonstring.Wire.Len(s); n != len(w) {
			t.Errorf("Wire.Len(%q) = %d, want %d", s, n, len(w))
		}
		var fromWire, fromStd string
		if err := json.Unmarshal(w, &fromWire); err != nil {
			t.Fatalf("Wire.Append(%q) = %s is not JSON: %v", s, w, err)
		}
		if err := json.Unmarshal(jsonstring.Std.Append(nil, s), &fromStd); err != nil || fromWire != fromStd {
			t.Errorf("%q: Wire reads back as %q, Std as %q (%v)", s, fromWire, fromStd, err)
		}
	}
}

// TestParse: Parse reads back what Std wrote, with its length, and
// refuses every other spelling of a string and what is not a string.
func TestParse(t *testing.T) {
	t.Parallel()
	for _, s := range samples {
		if !utf8.ValidString(s) {
			continue
		}
		q := string(jsonstring.Std.Append(nil, s))
		got, n, err := jsonstring.Parse(q + `,"rest"`)
		if err != nil || got != s || n != len(q) {
			t.Errorf("Parse(%s) = %q, %d, %v; want %q, %d", q, got, n, err, s, len(q))
		}
	}
	for _, bad := range []string{
		``, `null`, `x`, `"abc`, `"a\`, `"\u00`, `"\u0008"`, `"\u000a"`, `"\u0041"`, `"\/"`, `"\x"`,
		`"\u00E9"`, "\"\x01\"", "\"\u2028\"", "\"\xff\"", `"\uFFFD"`, `"\u202A"`,
	} {
		if got, _, err := jsonstring.Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %q, want an error", bad, got)
		}
	}
}

// FuzzAppendParse holds the package's invariant on any string.
func FuzzAppendParse(f *testing.F) {
	for _, s := range samples {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		std := jsonstring.Std.Append(nil, s)
		if want := encodingJSON(t, s); string(std) != want {
			t.Fatalf("Std.Append(%q) = %s, want %s", s, std, want)
		}
		wire := jsonstring.Wire.Append(nil, s)
		if jsonstring.Std.Len(s) != len(std) || jsonstring.Wire.Len(s) != len(wire) {
			t.Fatalf("Len(%q) disagrees with Append", s)
		}
		var a, b string
		if json.Unmarshal(std, &a) != nil || json.Unmarshal(wire, &b) != nil || a != b {
			t.Fatalf("%q: Std reads back as %q, Wire as %q", s, a, b)
		}
		if utf8.ValidString(s) && a != s {
			t.Fatalf("%q reads back as %q", s, a)
		}
		if got, n, err := jsonstring.Parse(string(std)); err != nil || got != a || n != len(std) {
			t.Fatalf("Parse(%s) = %q, %d, %v; want %q", std, got, n, err, a)
		}
	})
}
