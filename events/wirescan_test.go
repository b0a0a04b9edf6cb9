package events

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// wireScanCases are bodies of every shape the fast reader must read as
// encoding/json does, or decline.
var wireScanCases = []string{
	`[]`,
	` [ ] `,
	`[{"id":"a","tenant":"t","metric":"m","value":3,"time":"2026-01-02T03:04:05Z"}]`,
	`[{"id":"a","tenant":"t","metric":"m","value":3,"time":"2026-01-02T03:04:05Z","source":"s","properties":{"k":"v","k2":"v2"}},
	  {"id":"b","tenant":"t","metric":"m","value":0}]`,
	"[\n\t{ \"id\" : \"a\" , \"value\" : 12 , \"properties\" : { } }\r\n]",
	`[{"id":"a","properties":null}]`,
	`[{"id":"a","properties":{"k":null}}]`,
	`[{"id":"a\"b","value":1}]`,
	`[{"id":"a\u00e9","value":1}]`,
	`[{"id":"é€😀","value":1}]`,
	`[{"id":"a","value":"12"}]`,
	`[{"id":"a","value":null}]`,
	`[{"id":"a","value":1.5e3}]`,
	`[{"id":"a","value":-1}]`,
	`[{"id":null}]`,
	`[{"id":1}]`,
	`[{"id":"a","properties":{"k":1}}]`,
	`[{"id":"a","properties":[]}]`,
	`[{}]`,
	`[{},{}]`,
	`[1]`,
	`[{"id":"a"}] x`,
	"[{\"id\":\"\xff\"}]",
	`{"id":"a","tenant":"t","metric":"m","value":3}`,
}

// TestWireScanMatchesEncodingJSON checks that whenever the fast reader
// reads a body, encoding/json reads the same events from it.
func TestWireScanMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	bodies := append([]string(nil), wireScanCases...)
	files, _ := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzDecodeJSON", "*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// The corpus files hold `[]byte("...")` lines; take them as Go
		// string literals where they parse.
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "[]byte("); ok {
				if s, err := unquoteGo(strings.TrimSuffix(v, ")")); err == nil {
					bodies = append(bodies, s)
				}
			}
		}
	}
	read := 0
	for _, body := range bodies {
		if strings.HasPrefix(strings.TrimSpace(body), "[") {
			got, ok := scanWireArray([]byte(body))
			if !ok {
				continue
			}
			read++
			var want []wireEvent
			if err := json.Unmarshal([]byte(body), &want); err != nil {
				t.Errorf("%q: read by the fast reader, refused by encoding/json: %v", body, err)
				continue
			}
			if !reflect.DeepEqual(normalize(got), normalize(want)) {
				t.Errorf("%q:\n fast %#v\n json %#v", body, got, want)
			}
			continue
		}
		got, ok := scanWireObject([]byte(body))
		if !ok {
			continue
		}
		read++
		var want wireEvent
		if err := json.Unmarshal([]byte(body), &want); err != nil {
			t.Errorf("%q: read by the fast reader, refused by encoding/json: %v", body, err)
			continue
		}
		if !reflect.DeepEqual(normalize([]wireEvent{got}), normalize([]wireEvent{want})) {
			t.Errorf("%q:\n fast %#v\n json %#v", body, got, want)
		}
	}
	if read < 8 {
		t.Fatalf("the fast reader read only %d bodies", read)
	}
}

// normalize makes empty raw values nil, as both readers mean the same.
func normalize(ws []wireEvent) []wireEvent {
	out := make([]wireEvent, len(ws))
	for i, w := range ws {
		if len(w.Value) == 0 {
			w.Value = nil
		}
		out[i] = w
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func unquoteGo(s string) (string, error) {
	var out string
	err := json.Unmarshal([]byte(s), &out)
	return out, err
}

// TestWireScanDeclinesOddShapes checks that the fast reader leaves the
// shapes it does not handle to encoding/json.
func TestWireScanDeclinesOddShapes(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		`[{"id":"a\"b"}]`, `[{"id":"a\u00e9"}]`, `[{"value":"1"}]`, `[{"value":null}]`, `[{"id":null}]`,
		`[{"properties":{"k":null}}]`, `[{"properties":{"k":1}}]`, `[1]`, `[{"id":"a"}] x`, "[{\"id\":\"\xff\"}]",
	} {
		if _, ok := scanWireArray([]byte(body)); ok {
			t.Errorf("%q: read by the fast reader, want it declined", body)
		}
	}
}
