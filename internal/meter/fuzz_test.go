package meter_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/usagemeter/metering/internal/meter"
)

// FuzzGroupKey holds the group key's invariant for two groups of a meter
// grouped by two properties (present1 and present2 say, in bits 0 and 1,
// which properties each event carries) and for any key: Key is what
// encoding/json writes; ParseGroupKey gives the group back; two groups of
// valid UTF-8 have equal keys if and only if they are equal; and a key
// ParseGroupKey takes is the one Key writes for its group. The seed corpus
// is in testdata/fuzz/FuzzGroupKey.
func FuzzGroupKey(f *testing.F) {
	f.Add("gpt-4", "eu", uint8(3), "gpt-4", "", uint8(1), `["gpt-4",null]`)
	f.Add("", "", uint8(0), "", "", uint8(3), `[null,""]`)
	f.Add(`a","b`, "", uint8(1), "a", "b", uint8(3), `["\u00e9",null]`)
	d := meter.Definition{Metric: "m", Aggregation: meter.Sum, GroupBy: []string{"a", "b"}}
	group := func(a, b string, present uint8) meter.Group {
		props := map[string]string{}
		if present&1 != 0 {
			props["a"] = a
		}
		if present&2 != 0 {
			props["b"] = b
		}
		return d.Group(event(props))
	}
	f.Fuzz(func(t *testing.T, a1, b1 string, present1 uint8, a2, b2 string, present2 uint8, raw string) {
		g1, g2 := group(a1, b1, present1), group(a2, b2, present2)
		k1, k2 := g1.Key(), g2.Key()
		for _, c := range []struct {
			g    meter.Group
			k    string
			a, b string
		}{{g1, k1, a1, b1}, {g2, k2, a2, b2}} {
			if !utf8.ValidString(c.k) {
				t.Fatalf("Key %q is not valid UTF-8", c.k)
			}
			if want := encodingJSON(c.g); c.k != want {
				t.Fatalf("Key = %s, encoding/json writes %s", c.k, want)
			}
			back, err := meter.ParseGroupKey(d.GroupBy, c.k)
			if err != nil {
				t.Fatalf("ParseGroupKey(%s): %v", c.k, err)
			}
			if utf8.ValidString(c.a) && utf8.ValidString(c.b) && (!back.Equal(c.g) || back.Key() != c.k) {
				t.Fatalf("ParseGroupKey(%s) = %s", c.k, back.Key())
			}
		}
		if utf8.ValidString(a1+b1) && utf8.ValidString(a2+b2) && g1.Equal(g2) != (k1 == k2) {
			t.Fatalf("groups equal %v, keys %s and %s", g1.Equal(g2), k1, k2)
		}
		if g, err := meter.ParseGroupKey(d.GroupBy, raw); err == nil && !strings.Contains(raw, `\ufffd`) && g.Key() != raw {
			t.Fatalf("ParseGroupKey took %q, whose group's key is %q", raw, g.Key())
		}
	})
}

// encodingJSON is what encoding/json writes, without HTML escaping, for
// the array of g's values with null for a missing one.
func encodingJSON(g meter.Group) string {
	vals := make([]*string, g.Len())
	for i := range vals {
		if v, ok := g.Value(i); ok {
			vals[i] = &v
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(vals); err != nil {
		panic(err)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}
