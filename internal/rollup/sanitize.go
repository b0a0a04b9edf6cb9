package rollup

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxReasonBytes bounds a sanitised text: a reason or a tenant taken from
// a hostile record never grows a row or a log line without limit.
const MaxReasonBytes = 1024

// Sanitize returns s as text Postgres and people can read: valid UTF-8
// with no NUL or other control character (those and invalid bytes are
// written as Go escapes such as \x00 and \xff), at most MaxReasonBytes
// long. Text that is already clean is returned unchanged.
func Sanitize(s string) string {
	if clean(s) && len(s) <= MaxReasonBytes {
		return s
	}
	if !clean(s) {
		q := strconv.Quote(s)
		s = q[1 : len(q)-1]
	}
	if len(s) <= MaxReasonBytes {
		return s
	}
	const more = "..."
	cut := MaxReasonBytes - len(more)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	// Never end inside an escape such as \x0 of \x00.
	if i := strings.LastIndexByte(s[:cut], '\\'); i >= 0 && cut-i < 10 {
		cut = i
	}
	return s[:cut] + more
}

func clean(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}
