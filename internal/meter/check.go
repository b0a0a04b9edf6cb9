package meter

import (
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/usagemeter/metering/events"
)

// The checks below apply the event contract's rules (package events) to a
// meter's names, property keys and values, with the same messages;
// TestChecksAgreeWithEvents holds them to events.Validator.

// checkName is the rule of a tenant or metric name.
func checkName(s string) string {
	if s == "" {
		return "is required (1-128 characters of A-Z a-z 0-9 . _ : -)"
	}
	if len(s) > events.MaxNameLen {
		return fmt.Sprintf("must be at most %d characters, got %d", events.MaxNameLen, len(s))
	}
	if s == "." || s == ".." {
		// Names are URL path segments, where these two mean "here" and "up".
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

// checkPropertyKey is the rule of an event property's key, for a name in
// group_by or the unique_count property.
func checkPropertyKey(k string) string {
	switch {
	case k == "":
		return "must not be empty (a property name)"
	case len(k) > events.MaxPropertyKeyLen:
		return fmt.Sprintf("must be at most %d bytes, got %d", events.MaxPropertyKeyLen, len(k))
	}
	return checkText(k)
}

// checkText refuses invalid UTF-8 and control characters (C0, DEL, C1),
// as events do.
func checkText(s string) string {
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

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
