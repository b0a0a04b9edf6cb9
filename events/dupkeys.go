package events

import (
	"bytes"
	"strings"
)

// duplicateKeys walks a syntactically valid JSON document and reports
// every object key that appears twice in the same object, at any depth.
// encoding/json would silently keep the last one; for usage that is billed
// an ambiguous event must be rejected instead. The error's Index is the
// element of a top-level array the key is in (0 for a single object).
// It allocates nothing unless it finds a duplicate.
func duplicateKeys(b []byte) []FieldError {
	s := dupScanner{b: b}
	s.skipSpace()
	if s.i < len(b) && b[s.i] == '[' {
		s.i++
		for index := 0; ; index++ {
			s.skipSpace()
			if s.i >= len(b) || b[s.i] == ']' {
				break
			}
			s.index = index
			s.value()
			s.skipSpace()
			if s.i < len(b) && b[s.i] == ',' {
				s.i++
			}
		}
	} else {
		s.value()
	}
	return s.errs
}

type dupScanner struct {
	b     []byte
	i     int
	index int
	path  [][]byte // keys from the event down to the current object
	keys  [][]byte // keys of every open object, in order
	errs  []FieldError
}

func (s *dupScanner) skipSpace() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

// str returns the raw bytes of the string at s.i, escapes kept.
func (s *dupScanner) str() []byte {
	start := s.i + 1
	for s.i++; s.i < len(s.b); s.i++ {
		switch s.b[s.i] {
		case '\\':
			s.i++
		case '"':
			s.i++
			return s.b[start : s.i-1]
		}
	}
	return s.b[min(start, len(s.b)):]
}

func (s *dupScanner) value() {
	s.skipSpace()
	if s.i >= len(s.b) {
		return
	}
	switch s.b[s.i] {
	case '{':
		s.i++
		first := len(s.keys) // this object's keys are s.keys[first:]
		defer func() { s.keys = s.keys[:first] }()
		for {
			s.skipSpace()
			if s.i >= len(s.b) || s.b[s.i] == '}' {
				s.i++
				return
			}
			if s.b[s.i] == ',' {
				s.i++
				continue
			}
			key := s.str()
			for _, k := range s.keys[first:] {
				if bytes.Equal(k, key) {
					s.dup(key)
					break
				}
			}
			s.keys = append(s.keys, key)
			s.skipSpace()
			s.i++ // ':'
			s.path = append(s.path, key)
			s.value()
			s.path = s.path[:len(s.path)-1]
		}
	case '[':
		s.i++
		for {
			s.skipSpace()
			if s.i >= len(s.b) || s.b[s.i] == ']' {
				s.i++
				return
			}
			if s.b[s.i] == ',' {
				s.i++
				continue
			}
			s.value()
		}
	case '"':
		s.str()
	default:
		start := s.i
		for s.i < len(s.b) && s.b[s.i] != ',' && s.b[s.i] != '}' && s.b[s.i] != ']' {
			s.i++
		}
		if s.i == start { // not JSON here: move on so malformed input ends
			s.i++
		}
	}
}

func (s *dupScanner) dup(key []byte) {
	parts := make([]string, 0, len(s.path)+1)
	for _, p := range s.path {
		parts = append(parts, string(p))
	}
	parts = append(parts, string(key))
	s.errs = append(s.errs, FieldError{Index: s.index, Field: strings.Join(parts, "."),
		Message: "appears twice in the same object; send each field once"})
}
