package meter

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/usagemeter/metering/events"
)

// Group is one combination of a meter's group_by values: for each
// property in group_by order, its value or its absence. The implicit
// meter, and any meter without group_by, has one group: the empty one,
// whose key is "". A Group is a value: computing one does not allocate.
type Group struct {
	names  []string // the meter's group_by, shared
	values [MaxGroupBy]string
	set    uint8 // bit i: the event carries names[i]
}

// Group returns e's group in this meter: the values of the group_by
// properties, a missing property kept apart from an empty value. Only the
// first MaxGroupBy names count (Validate refuses more).
func (d Definition) Group(e events.Event) Group {
	names := d.GroupBy
	if len(names) > MaxGroupBy {
		names = names[:MaxGroupBy]
	}
	g := Group{names: names}
	for i, k := range names {
		if v, ok := e.Properties[k]; ok {
			g.values[i] = v
			g.set |= 1 << i
		}
	}
	return g
}

// Len is how many properties the group has values (or absences) for.
func (g Group) Len() int { return len(g.names) }

// Name is the i-th group_by property.
func (g Group) Name(i int) string { return g.names[i] }

// Value is the i-th property's value, and false if the event lacked it.
func (g Group) Value(i int) (string, bool) {
	return g.values[i], g.set&(1<<i) != 0
}

// Equal reports whether g and o have the same values and absences, by
// position (the names are not compared).
func (g Group) Equal(o Group) bool {
	if len(g.names) != len(o.names) || g.set != o.set {
		return false
	}
	for i := range g.names {
		if g.values[i] != o.values[i] {
			return false
		}
	}
	return true
}

// Key returns the group's storage key: "" for a group of no properties,
// else a JSON array of the values in group_by order, null for a missing
// one, as compact as encoding/json writes it without HTML escaping:
// ["gpt-4",null]. It allocates once (the string). Values are expected to
// be valid UTF-8 (events.Validator refuses others); an invalid byte is
// written as \ufffd, as encoding/json does.
func (g Group) Key() string {
	if len(g.names) == 0 {
		return ""
	}
	var b strings.Builder
	b.Grow(g.keyLen())
	b.WriteByte('[')
	for i := range g.names {
		if i > 0 {
			b.WriteByte(',')
		}
		if g.set&(1<<i) == 0 {
			b.WriteString("null")
			continue
		}
		writeQuoted(&b, g.values[i])
	}
	b.WriteByte(']')
	return b.String()
}

// AppendKey appends Key to dst, without allocating when dst has room.
func (g Group) AppendKey(dst []byte) []byte {
	if len(g.names) == 0 {
		return dst
	}
	dst = append(dst, '[')
	for i := range g.names {
		if i > 0 {
			dst = append(dst, ',')
		}
		if g.set&(1<<i) == 0 {
			dst = append(dst, "null"...)
			continue
		}
		dst = appendQuoted(dst, g.values[i])
	}
	return append(dst, ']')
}

// keyLen is len(g.Key()) for a group of at least one property.
func (g Group) keyLen() int {
	n := 1 + len(g.names) // brackets and commas
	for i := range g.names {
		if g.set&(1<<i) == 0 {
			n += len("null")
		} else {
			n += quotedLen(g.values[i])
		}
	}
	return n
}

// MarshalJSON writes the group as an object in group_by order, null for a
// missing property: {"model":"gpt-4","region":null}; {} for no properties.
func (g Group) MarshalJSON() ([]byte, error) {
	dst := make([]byte, 0, 2+g.keyLen()+8*len(g.names))
	dst = append(dst, '{')
	for i, name := range g.names {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendQuoted(dst, name)
		dst = append(dst, ':')
		if v, ok := g.Value(i); ok {
			dst = appendQuoted(dst, v)
		} else {
			dst = append(dst, "null"...)
		}
	}
	return append(dst, '}'), nil
}

// ParseGroupKey returns the group of a meter grouped by groupBy whose key
// is key: the inverse of Group.Key. It accepts only what Key writes: ""
// when groupBy is empty, else a canonical array of exactly len(groupBy)
// elements. On error the Group is the zero one.
func ParseGroupKey(groupBy []string, key string) (Group, error) {
	g := Group{names: groupBy}
	if len(groupBy) > MaxGroupBy {
		return Group{}, fmt.Errorf("group key %q: a meter groups by at most %d properties, got %d", key, MaxGroupBy, len(groupBy))
	}
	if len(groupBy) == 0 {
		if key != "" {
			return Group{}, fmt.Errorf("group key %q: a meter without group_by has only the empty key", key)
		}
		return g, nil
	}
	rest, ok := strings.CutPrefix(key, "[")
	if !ok {
		return Group{}, fmt.Errorf("group key %q: want a JSON array of %d values", key, len(groupBy))
	}
	for i := range groupBy {
		if i > 0 {
			if rest, ok = strings.CutPrefix(rest, ","); !ok {
				return Group{}, fmt.Errorf("group key %q: want %d values, got %d", key, len(groupBy), i)
			}
		}
		if rest, ok = strings.CutPrefix(rest, "null"); ok {
			continue
		}
		v, n, err := parseQuoted(rest)
		if err != nil {
			return Group{}, fmt.Errorf("group key %q: value %d: %w", key, i, err)
		}
		g.values[i], g.set = v, g.set|1<<i
		rest = rest[n:]
	}
	if rest != "]" {
		return Group{}, fmt.Errorf("group key %q: want %d values and then the end of the array", key, len(groupBy))
	}
	return g, nil
}

const hexDigits = "0123456789abcdef"

// quotedLen is len(appendQuoted(nil, s)).
func quotedLen(s string) int {
	n := 2 + len(s)
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t':
				n++
			case c < 0x20:
				n += 5
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			n += 5 // one byte becomes \ufffd
		case r == '\u2028' || r == '\u2029':
			n += 3 // three bytes become \u202x
		}
		i += size
	}
	return n
}

// appendQuoted appends s as a JSON string exactly as encoding/json writes
// it with HTML escaping off: \" \\ \b \f \n \r \t, \u00xx for the other
// C0 controls, \ufffd for an invalid byte, \u2028 and \u2029 escaped,
// everything else as is.
func appendQuoted(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// writeQuoted writes s to b as appendQuoted does, without a buffer of its
// own: the common value needs no escape and is written in one piece.
func writeQuoted(b *strings.Builder, s string) {
	if quotedLen(s) == len(s)+2 { // nothing to escape, no invalid byte
		b.WriteByte('"')
		b.WriteString(s)
		b.WriteByte('"')
		return
	}
	var buf [64]byte
	b.Write(appendQuoted(buf[:0], s))
}

var errNotCanonical = errors.New("not a string as Key writes it")

// parseQuoted reads the JSON string at the start of s and returns its
// value and length. It takes only what appendQuoted writes: every escape
// in its one form (\ufffd, which stands for an invalid byte, reads as
// U+FFFD), and no raw byte that appendQuoted would have escaped.
func parseQuoted(s string) (string, int, error) {
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
		switch e := s[i+1]; e {
		case '"', '\\':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			if i+6 > len(s) {
				return "", 0, errors.New("short \\u escape")
			}
			var r rune
			for _, h := range []byte(s[i+2 : i+6]) {
				d := strings.IndexByte(hexDigits, h)
				if d < 0 {
					return "", 0, errNotCanonical
				}
				r = r<<4 | rune(d)
			}
			switch {
			case r < 0x20 && r != '\b' && r != '\f' && r != '\n' && r != '\r' && r != '\t',
				r == '\u2028', r == '\u2029', r == utf8.RuneError:
			default:
				return "", 0, errNotCanonical
			}
			out = utf8.AppendRune(out, r)
			i += 4
		default:
			return "", 0, errNotCanonical
		}
		i += 2
	}
	return string(out), i + 1, nil
}
