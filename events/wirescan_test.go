package events

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/usagemeter/metering/events/jsonscan"
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

// FuzzWireScan: for any body that passes the decoder's pre-scan with no
// suspect key (the only bodies the fast reader is given), the fast reader
// either declines it or reads exactly the events encoding/json reads.
// Its corpus in testdata/fuzz/FuzzWireScan runs as a regression test.
func FuzzWireScan(f *testing.F) {
	for _, c := range wireScanCases {
		f.Add([]byte(c))
	}
	for _, c := range []string{
		`[{"id":"a","tenant":"t","metric":"m","value":1e3,"time":"2026-11-21T18:59:00Z"}]`,
		`[{"id":"a","tenant":"t","metric":"m","value":-0,"time":"2026-11-21T18:59:00Z"}]`,
		`[{"id":"a","tenant":"t","metric":"m","value":99999999999999999999,"time":"2026-11-21T18:59:00Z"}]`,
		`[{"id":"\u00e9","tenant":"t","metric":"m","value":1,"time":"2026-11-21T18:59:00Z","properties":{"k":"v\"w"}}]`,
		`{"id":"a","tenant":"t","metric":"m","value":1.5,"time":"2026-11-21T18:59:00Z","properties":null}`,
		`[ {"id":"a" , "tenant":"t","metric":"m","value":1,"time":"2026-11-21T18:59:00Z","properties":{}} ]`,
	} {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		trimmed := strings.TrimLeft(string(body), " \t\r\n")
		if trimmed == "" || (trimmed[0] != '[' && trimmed[0] != '{') {
			return
		}
		batch := trimmed[0] == '['
		issues, err := jsonscan.Scan(body, Decoder{}.scanOptions(batch, eventKey))
		if err != nil || len(issues) > 0 {
			return
		}
		if batch {
			got, ok := scanWireArray(body)
			if !ok {
				return
			}
			var want []wireEvent
			if err := json.Unmarshal(body, &want); err != nil {
				t.Fatalf("%q: read by the fast reader, refused by encoding/json: %v", body, err)
			}
			if !reflect.DeepEqual(normalize(got), normalize(want)) {
				t.Fatalf("%q:\n fast %#v\n json %#v", body, got, want)
			}
			return
		}
		got, ok := scanWireObject(body)
		if !ok {
			return
		}
		var want wireEvent
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatalf("%q: read by the fast reader, refused by encoding/json: %v", body, err)
		}
		if !reflect.DeepEqual(normalize([]wireEvent{got}), normalize([]wireEvent{want})) {
			t.Fatalf("%q:\n fast %#v\n json %#v", body, got, want)
		}
	})
}
