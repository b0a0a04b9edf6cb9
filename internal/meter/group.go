package meter

import (
	"fmt"
	"strings"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/events/jsonstring"
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
		dst = jsonstring.Std.Append(dst, g.values[i])
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
			n += jsonstring.Std.Len(g.values[i])
		}
	}
	return n
}

// MarshalJSON writes the group as an object in group_by order, null for a
// missing property: {"model":"gpt-4","region":null}; {} for no properties.
func (g Group) MarshalJSON() ([]byte, error) {
	return g.AppendJSON(make([]byte, 0, 2+g.keyLen()+8*len(g.names))), nil
}

// AppendJSON appends what MarshalJSON writes to dst, without allocating
// when dst has room: an answer of many windows writes each one's group.
func (g Group) AppendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	for i, name := range g.names {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = jsonstring.Std.Append(dst, name)
		dst = append(dst, ':')
		if v, ok := g.Value(i); ok {
			dst = jsonstring.Std.Append(dst, v)
		} else {
			dst = append(dst, "null"...)
		}
	}
	return append(dst, '}')
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
		v, n, err := jsonstring.Parse(rest)
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

// writeQuoted writes s to b as jsonstring.Std does, without a buffer of
// its own: the common value needs no escape and is written in one piece.
func writeQuoted(b *strings.Builder, s string) {
	if jsonstring.Std.Len(s) == len(s)+2 { // nothing to escape, no invalid byte
		b.WriteByte('"')
		b.WriteString(s)
		b.WriteByte('"')
		return
	}
	var buf [64]byte
	b.Write(jsonstring.Std.Append(buf[:0], s))
}
