// Package jsonstring writes strings as JSON string literals, byte for
// byte as the product's encodings need them, without reflection and
// without allocating beyond the destination, and reads back the ones it
// wrote. Package events writes an event's strings with Wire; meter group
// keys are written with Std and read with Parse.
//
// Invariant: for every string s, Std.Append(nil, s) is exactly what
// encoding/json writes for s with HTML escaping off; Wire.Append(nil, s)
// differs from it only where s holds a C0 control without a short escape
// in Wire (\b and \f are written \u0008 and \u000c) or U+2028 or U+2029
// (written as they are); both decode to s, an invalid byte read as U+FFFD;
// Style.Len(s) is the length Append writes; and for valid UTF-8 Parse
// gives back s from Std.Append(nil, s) and refuses every other spelling of
// the same string (TestStdIsEncodingJSON, TestWire, TestParse,
// FuzzAppendParse).
package jsonstring

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Style is a way of writing a JSON string.
type Style uint8

const (
	// Std writes as encoding/json does with HTML escaping off: \" \\ \b
	// \f \n \r \t, \u00xx for the other C0 controls, \ufffd for an
	// invalid byte, \u2028 and \u2029 escaped, everything else as is.
	Std Style = iota
	// Wire writes as the event contract's canonical encoding has since
	// its first release: \" \\ \n \r \t, \u00xx for the other C0
	// controls (\b and \f included), \ufffd for an invalid byte,
	// everything else as is (U+2028 and U+2029 included).
	Wire
)

const hexDigits = "0123456789abcdef"

// escapesLineSeparators reports whether s writes U+2028 and U+2029 as
// escapes.
func (s Style) escapesLineSeparators() bool { return s == Std }

// shortEscape returns the letter of c's two-byte escape in s (\n for a
// newline), or 0 if s writes c as \u00xx.
func (s Style) shortEscape(c byte) byte {
	switch c {
	case '"', '\\':
		return c
	case '\n':
		return 'n'
	case '\r':
		return 'r'
	case '\t':
		return 't'
	case '\b':
		if s == Std {
			return 'b'
		}
	case '\f':
		if s == Std {
			return 'f'
		}
	}
	return 0
}

// Append appends str to dst as a JSON string written in style s.
func (s Style) Append(dst []byte, str string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(str); {
		c := str[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, str[start:i]...)
			if e := s.shortEscape(c); e != 0 {
				dst = append(dst, '\\', e)
			} else {
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(str[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, str[start:i]...)
			dst = append(dst, `\ufffd`...)
		case (r == '\u2028' || r == '\u2029') && s.escapesLineSeparators():
			dst = append(dst, str[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, str[start:]...)
	return append(dst, '"')
}

// Len returns len(s.Append(nil, str)) without writing it.
func (s Style) Len(str string) int {
	n := 2 + len(str)
	for i := 0; i < len(str); {
		c := str[i]
		if c < utf8.RuneSelf {
			switch {
			case c >= 0x20 && c != '"' && c != '\\':
			case s.shortEscape(c) != 0:
				n++
			default:
				n += 5
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(str[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			n += 5 // one byte becomes \ufffd
		case (r == '\u2028' || r == '\u2029') && s.escapesLineSeparators():
			n += 3 // three bytes become \u202x
		}
		i += size
	}
	return n
}

// errNotCanonical is Parse's error for a string Std would have written
// otherwise.
var errNotCanonical = errors.New("not a string as Std writes it")

// Parse reads the JSON string at the start of s and returns its value and
// length. It takes only what Std writes: every escape in its one form
// (\ufffd, which stands for an invalid byte, reads as U+FFFD), and no raw
// byte that Std would have escaped.
func Parse(s string) (string, int, error) {
	if len(s) == 0 || s[0] != '"' {
		return "", 0, errors.New("want a string or null")
	}
	var out []byte
	i := 1
	for {
		if i >= len(s) {
			return "", 0, errors.New("unterminated string")
		}
		c := s[i]
		if c == '"' {
			break
		}
		if c < utf8.RuneSelf && c != '\\' {
			if c < 0x20 {
				return "", 0, errNotCanonical
			}
			out = append(out, c)
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
				return "", 0, errNotCanonical
			}
			out = append(out, s[i:i+size]...)
			i += size
			continue
		}
		if i+1 >= len(s) {
			return "", 0, errors.New("unterminated escape")
		}
		r, n, err := parseEscape(s[i:])
		if err != nil {
			return "", 0, err
		}
		out = utf8.AppendRune(out, r)
		i += n
	}
	return string(out), i + 1, nil
}

// parseEscape reads the escape at the start of s (which begins with a
// backslash and one more byte) in the one form Std writes, and returns
// the character and the escape's length.
func parseEscape(s string) (rune, int, error) {
	switch e := s[1]; e {
	case '"', '\\':
		return rune(e), 2, nil
	case 'b':
		return '\b', 2, nil
	case 'f':
		return '\f', 2, nil
	case 'n':
		return '\n', 2, nil
	case 'r':
		return '\r', 2, nil
	case 't':
		return '\t', 2, nil
	case 'u':
		if len(s) < 6 {
			return 0, 0, errors.New("short \\u escape")
		}
		var r rune
		for _, h := range []byte(s[2:6]) {
			d := strings.IndexByte(hexDigits, h)
			if d < 0 {
				return 0, 0, errNotCanonical
			}
			r = r<<4 | rune(d)
		}
		if r < 0x20 && Std.shortEscape(byte(r)) == 0 || r == '\u2028' || r == '\u2029' || r == utf8.RuneError {
			return r, 6, nil
		}
	}
	return 0, 0, errNotCanonical
}
