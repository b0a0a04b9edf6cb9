// Package fieldcheck holds the event contract's rules for the text of one
// field: a name (a tenant or a metric), a property (its key and value),
// free text. Package events checks events with them, and meter
// definitions, which name metrics and event properties and hold property
// values, check theirs with them, so both refuse the same strings with the
// same messages. Each check returns "" for an allowed string, else a
// message that follows the field's name ("metric: must not be \"..\"").
//
// Invariant: Name(s) is "" exactly when s is 1 to MaxNameLen bytes of
// A-Z a-z 0-9 . _ : - and is neither "." nor ".."; Text(s) is "" exactly
// when s is valid UTF-8 without a C0 control (U+0000 to U+001F), DEL or a
// C1 control (U+0080 to U+009F); Property finds a problem exactly when the
// key is empty, longer than MaxPropertyKeyLen or not Text, or the value
// longer than MaxPropertyValueLen or not Text (TestName, TestText,
// TestProperty, FuzzChecks).
package fieldcheck

import (
	"fmt"
	"unicode/utf8"
)

// Limits of the contract.
const (
	// MaxNameLen is the longest tenant or metric name.
	MaxNameLen = 128
	// MaxPropertyKeyLen and MaxPropertyValueLen bound each property, in bytes.
	MaxPropertyKeyLen   = 128
	MaxPropertyValueLen = 1024
)

// Name checks a tenant or metric name: 1-128 characters of A-Z a-z 0-9 .
// _ : -, and not "." or "..".
func Name(s string) string {
	if s == "" {
		return "is required (1-128 characters of A-Z a-z 0-9 . _ : -)"
	}
	if len(s) > MaxNameLen {
		return fmt.Sprintf("must be at most %d characters, got %d", MaxNameLen, len(s))
	}
	if s == "." || s == ".." {
		// Names are URL path segments (/v1/quotas/{tenant}), where these
		// two mean "here" and "up".
		return fmt.Sprintf("must not be %q", s)
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			r, _ := utf8.DecodeRuneInString(s[i:])
			return fmt.Sprintf("may contain only A-Z a-z 0-9 . _ : -; found %q at byte %d", r, i)
		}
	}
	return ""
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '_' || c == ':' || c == '-'
}

// Text refuses invalid UTF-8 and control characters: C0 (U+0000 to
// U+001F, NUL included), DEL and C1 (U+0080 to U+009F), which terminals,
// CSV readers and logs may interpret.
func Text(s string) string {
	if !utf8.ValidString(s) {
		return "must be valid UTF-8"
	}
	for _, r := range s {
		if r < 0x20 || r >= 0x7f && r <= 0x9f {
			return fmt.Sprintf("must not contain control characters (found %U)", r)
		}
	}
	return ""
}

// Property checks one property, key and value, of the map named field
// ("properties" of an event): the first problem, and the field it is
// reported on (field itself for the key, field.key for the value), or ""
// and "" when there is none.
func Property(field, key, value string) (string, string) {
	switch {
	case key == "":
		return field, "keys must not be empty"
	case len(key) > MaxPropertyKeyLen:
		return field + "." + key[:16] + "...", fmt.Sprintf("key must be at most %d bytes", MaxPropertyKeyLen)
	case Text(key) != "":
		return field, fmt.Sprintf("key %q %s", key, Text(key))
	case len(value) > MaxPropertyValueLen:
		return field + "." + key, fmt.Sprintf("must be at most %d bytes, got %d", MaxPropertyValueLen, len(value))
	case Text(value) != "":
		return field + "." + key, Text(value)
	}
	return "", ""
}
