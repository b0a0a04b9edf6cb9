package events

import (
	"bytes"
	"unicode/utf8"
)

// The fast path's reader of events already pre-scanned (jsonscan: valid
// JSON within the limits, every key an event field spelled exactly, none
// twice). It reads the common shape without reflection and without
// validating the syntax a second time: string fields that are plain
// strings (no escapes, valid UTF-8), a value that is a number, properties
// that are an object of such strings. Anything else (an escape, a null, a
// value of another type) returns ok false, and the caller decodes the body
// with encoding/json as before, so the result is the same either way
// (TestWireScanMatchesEncodingJSON).

// wireScanner reads one pre-scanned body.
type wireScanner struct {
	b []byte
	i int
}

// scanWireArray reads a JSON array of event objects.
func scanWireArray(b []byte) ([]wireEvent, bool) {
	s := wireScanner{b: b}
	s.ws()
	if !s.eat('[') {
		return nil, false
	}
	// A first guess at the count from the objects' opening braces, which
	// properties and strings may add to: never too few for a common body.
	ws := make([]wireEvent, 0, bytes.Count(b, []byte("{\""))/2+1)
	s.ws()
	if s.eat(']') {
		return ws, s.end()
	}
	for {
		var w wireEvent
		if !s.object(&w) {
			return nil, false
		}
		ws = append(ws, w)
		s.ws()
		if s.eat(',') {
			s.ws()
			continue
		}
		if s.eat(']') {
			return ws, s.end()
		}
		return nil, false
	}
}

// scanWireObject reads one event object.
func scanWireObject(b []byte) (wireEvent, bool) {
	s := wireScanner{b: b}
	var w wireEvent
	s.ws()
	if !s.object(&w) {
		return wireEvent{}, false
	}
	return w, s.end()
}

func (s *wireScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

func (s *wireScanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end reports whether only white space is left.
func (s *wireScanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// str reads a plain string: no escape, valid UTF-8.
func (s *wireScanner) str() (string, bool) {
	if !s.eat('"') {
		return "", false
	}
	start := s.i
	j := bytes.IndexByte(s.b[s.i:], '"')
	if j < 0 {
		return "", false
	}
	raw := s.b[start : start+j]
	if bytes.IndexByte(raw, '\\') >= 0 || !utf8.Valid(raw) {
		return "", false
	}
	s.i = start + j + 1
	return string(raw), true
}

// number reads a number literal as its bytes.
func (s *wireScanner) number() ([]byte, bool) {
	start := s.i
	for s.i < len(s.b) {
		switch c := s.b[s.i]; {
		case c >= '0' && c <= '9', c == '-', c == '+', c == '.', c == 'e', c == 'E':
			s.i++
			continue
		}
		break
	}
	if s.i == start {
		return nil, false
	}
	return s.b[start:s.i], true
}

// object reads an event object into w.
func (s *wireScanner) object(w *wireEvent) bool {
	if !s.eat('{') {
		return false
	}
	s.ws()
	if s.eat('}') {
		return true
	}
	for {
		key, ok := s.str()
		if !ok {
			return false
		}
		s.ws()
		if !s.eat(':') {
			return false
		}
		s.ws()
		switch key {
		case "id":
			w.ID, ok = s.str()
		case "tenant":
			w.Tenant, ok = s.str()
		case "metric":
			w.Metric, ok = s.str()
		case "time":
			w.Time, ok = s.str()
		case "source":
			w.Source, ok = s.str()
		case "value":
			w.Value, ok = s.number()
		case "properties":
			w.Properties, ok = s.properties()
		default:
			ok = false
		}
		if !ok {
			return false
		}
		s.ws()
		if s.eat(',') {
			s.ws()
			continue
		}
		return s.eat('}')
	}
}

// properties reads an object of plain strings, or null (nil), as
// encoding/json does (an empty object is an empty map, not nil).
func (s *wireScanner) properties() (map[string]string, bool) {
	if bytes.HasPrefix(s.b[s.i:], []byte("null")) {
		s.i += len("null")
		return nil, true
	}
	if !s.eat('{') {
		return nil, false
	}
	m := map[string]string{}
	s.ws()
	if s.eat('}') {
		return m, true
	}
	for {
		k, ok := s.str()
		if !ok {
			return nil, false
		}
		s.ws()
		if !s.eat(':') {
			return nil, false
		}
		s.ws()
		v, ok := s.str()
		if !ok {
			return nil, false
		}
		m[k] = v
		s.ws()
		if s.eat(',') {
			s.ws()
			continue
		}
		if s.eat('}') {
			return m, true
		}
		return nil, false
	}
}
