package jsonscan_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events/jsonscan"
)

func TestScanSyntax(t *testing.T) {
	t.Parallel()
	docs := []string{
		`{}`, `[]`, ` {"a" : [1, -0.5e+3, true, false, null, "x\"\\\/\b\f\n\r\t\u00e9"]} `, `"s"`, `0`, `-1.25E-7`,
		``, ` `, `{`, `[`, `{"a"}`, `{"a":}`, `{"a":1,}`, `[1,]`, `[1 2]`, `{"a":1 "b":2}`, `{1:2}`,
		`01`, `-`, `1.`, `1e`, `.5`, `+1`, `tru`, `nul`, `falsey`, `"a`, `"\x"`, `"\u12"`, `"\u12g4"`, "\"a\x01\"",
		`{} {}`, `[]]`, `{]`, `[}`, `"\`, `{"a":1}x`, `nan`, `[-]`,
	}
	for _, doc := range docs {
		_, err := jsonscan.Scan([]byte(doc), jsonscan.Options{})
		if valid := json.Valid([]byte(doc)); (err == nil) != valid {
			t.Errorf("Scan(%q) = %v; encoding/json says valid=%v", doc, err, valid)
		}
		var se *jsonscan.Error
		if err != nil && (!errors.As(err, &se) || se.Code != jsonscan.CodeSyntax) {
			t.Errorf("Scan(%q) = %v, want a %s *Error", doc, err, jsonscan.CodeSyntax)
		}
	}
}

func TestScanLimits(t *testing.T) {
	t.Parallel()
	small := jsonscan.Limits{MaxBytes: 100, MaxDepth: 3, MaxStringBytes: 5, MaxKeys: 2, MaxElements: 2}
	tests := []struct {
		name, doc        string
		batch            bool
		code, path       string
		index, maxOffset int
	}{
		{"at every limit", `[[{"abcde":12345,"k":"abcde"}],[]]`, false, "", "", 0, 0},
		{"too large", `[` + strings.Repeat(" ", 100) + `]`, false, jsonscan.CodeTooLarge, "", 0, 0},
		{"too deep", `[[[[1]]]]`, false, jsonscan.CodeTooDeep, "[0][0][0]", 0, 3},
		{"too deep in a batch item", `[1,{"a":{"b":[]}}]`, true, jsonscan.CodeTooDeep, "a.b", 1, 13},
		{"fifty [", strings.Repeat("[", 50), false, jsonscan.CodeTooDeep, "[0][0][0]", 0, 3},
		{"string too long", `{"a":"abcdef"}`, false, jsonscan.CodeTooLong, "a", 0, 5},
		{"key too long", `{"abcdef":1}`, false, jsonscan.CodeTooLong, "", 0, 1},
		{"number too long", `[123456]`, false, jsonscan.CodeTooLong, "[0]", 0, 1},
		{"too many keys", `{"a":{"a":1,"b":2,"c":3}}`, false, jsonscan.CodeTooManyKeys, "a", 0, 18},
		{"too many elements", `[1,2,3]`, false, jsonscan.CodeTooManyElements, "[2]", 0, 5},
		{"too many items", `[{},{},{}]`, true, jsonscan.CodeTooManyElements, "", 2, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := jsonscan.Scan([]byte(tt.doc), jsonscan.Options{Limits: small, Batch: tt.batch})
			if tt.code == "" {
				if err != nil {
					t.Fatalf("Scan: %v", err)
				}
				return
			}
			var se *jsonscan.Error
			if !errors.As(err, &se) {
				t.Fatalf("Scan = %v, want *Error %s", err, tt.code)
			}
			if se.Code != tt.code || se.Path != tt.path || se.Index != tt.index || se.Offset > tt.maxOffset {
				t.Fatalf("Scan = %+v, want code %s, index %d, path %q, offset ≤ %d", se, tt.code, tt.index, tt.path, tt.maxOffset)
			}
		})
	}
}

func TestScanDuplicateKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, doc string
		batch     bool
		want      []string // index:path:other
	}{
		{"none", `{"value":1,"values":2,"properties":{"value":"x"}}`, false, nil},
		{"same spelling", `{"value":1,"value":900}`, false, []string{"0:value:value"}},
		{"another case", `{"value":1,"VALUE":900}`, false, []string{"0:VALUE:value"}},
		{"escaped", `{"value":1,"val\u0075e":900}`, false, []string{"0:value:value"}},
		{"escaped other case", `{"value":1,"V\u0041LUE":900}`, false, []string{"0:VALUE:value"}},
		{"escaped solidus", `{"a/b":1,"a\/b":2}`, false, []string{"0:a/b:a/b"}},
		{"long s folds to s", `{"source":1,"ſource":2}`, false, []string{"0:ſource:source"}},
		{"Kelvin sign folds to k", `{"key":1,"\u212aEY":2}`, false, []string{"0:\u212aEY:key"}},
		{"surrogate pair", `{"\ud83d\ude00":1,"😀":2}`, false, []string{"0:😀:😀"}},
		{"lone surrogates read as U+FFFD", `{"\ud800":1,"\udc00":2}`, false, []string{"0:\ufffd:\ufffd"}},
		{"nested", `{"properties":{"Region":"eu","region":"us"}}`, false, []string{"0:properties.region:Region"}},
		{"same key in sibling objects is fine", `[{"a":1},{"a":2}]`, false, nil},
		{"same key at two levels is fine", `{"a":{"a":{"a":1}}}`, false, nil},
		{"in an array", `{"q":[{"m":1},{"m":1,"M":2}]}`, false, []string{"0:q[1].M:m"}},
		{"batch index", `[{"a":1},{"b":1,"b":2}]`, true, []string{"1:b:b"}},
		{"every one", `[{"a":1,"a":2,"A":3},{"p":{"x":1,"X":2}}]`, true, []string{"0:a:a", "0:A:a", "1:p.X:x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			issues, err := jsonscan.Scan([]byte(tt.doc), jsonscan.Options{Batch: tt.batch})
			if err != nil {
				t.Fatalf("Scan: %v", err)
			}
			var got []string
			for _, is := range issues {
				if is.Code != jsonscan.IssueDuplicate {
					t.Errorf("issue %+v, want %s", is, jsonscan.IssueDuplicate)
				}
				got = append(got, fmt.Sprintf("%d:%s:%s", is.Index, is.Path, is.Other))
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("issues = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestScanItemKey(t *testing.T) {
	t.Parallel()
	exact := func(k []byte) bool { return string(k) == "id" || string(k) == "value" || string(k) == "properties" }
	tests := []struct {
		name, doc string
		batch     bool
		want      []string // code:index:path
	}{
		{"exact keys", `{"id":"a","value":1,"properties":{"Any":"x"}}`, false, nil},
		{"escaped exact key", `{"val\u0075e":1}`, false, nil},
		{"another case", `{"Value":1}`, false, []string{"unknown_key:0:Value"}},
		{"a duplicate is reported once", `{"value":1,"VALUE":2}`, false, []string{"duplicate_key:0:VALUE"}},
		{"batch items", `[{"id":"a"},{"ID":"b"}]`, true, []string{"unknown_key:1:ID"}},
		{"array not batched: the array is the item", `[{"ID":"b"}]`, false, nil},
		{"nested objects are not judged", `[{"properties":{"ID":"x"}}]`, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			issues, err := jsonscan.Scan([]byte(tt.doc), jsonscan.Options{Batch: tt.batch, ItemKey: exact})
			if err != nil {
				t.Fatalf("Scan: %v", err)
			}
			var got []string
			for _, is := range issues {
				got = append(got, fmt.Sprintf("%s:%d:%s", is.Code, is.Index, is.Path))
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("issues = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestScanMaxIssues(t *testing.T) {
	t.Parallel()
	doc := `{` + strings.TrimSuffix(strings.Repeat(`"a":1,`, 50), ",") + `}`
	issues, err := jsonscan.Scan([]byte(doc), jsonscan.Options{MaxIssues: 3})
	if err != nil || len(issues) != 3 {
		t.Fatalf("Scan = %d issues, %v; want 3", len(issues), err)
	}
}

// batchDoc is n realistic events as a JSON array.
func batchDoc(n int) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"0193a5c2-7d3e-7b2a-9f1e-%012d","tenant":"acme","metric":"api_calls","value":%d,"time":"2026-11-21T19:00:00.123Z","source":"checkout-svc","properties":{"endpoint":"/v1/chat","region":"eu","r\u00e9gion":"x"}}`, i, i)
	}
	b.WriteByte(']')
	return b.Bytes()
}

func TestScanAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	doc := batchDoc(1000)
	opt := jsonscan.Options{Batch: true, ItemKey: func(k []byte) bool { return len(k) > 0 }}
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := jsonscan.Scan(doc, opt); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Scan of a valid %d-byte batch made %.1f allocations, want 0", len(doc), allocs)
	}
}

// TestScanFiveMillionBrackets is the probe that killed ingest with a
// stack overflow (a fatal error no recover catches): surviving is the test.
func TestScanFiveMillionBrackets(t *testing.T) {
	t.Parallel()
	for _, c := range []string{"[", "{\"a\":"} {
		doc := []byte(strings.Repeat(c, 5_000_000))
		done := make(chan error, 1)
		start := time.Now()
		go func() {
			_, err := jsonscan.Scan(doc, jsonscan.Options{Limits: jsonscan.Limits{MaxBytes: len(doc)}})
			done <- err
		}()
		err := <-done
		var se *jsonscan.Error
		if !errors.As(err, &se) || se.Code != jsonscan.CodeTooDeep || se.Offset > 50 {
			t.Fatalf("Scan(5M × %q) = %v, want %s near the start", c, err, jsonscan.CodeTooDeep)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Scan(5M × %q) took %s", c, d)
		}
	}
}

// TestScanMemoryBounded checks the bound the package promises: whatever
// the document, Scan's own memory is O(depth), here a few kilobytes.
func TestScanMemoryBounded(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	var keys []string
	for i := range 60 {
		keys = append(keys, fmt.Sprintf(`"\u0061\u0062%d":1`, i))
	}
	escapedKeys := "{" + strings.Join(keys, ",") + "}"
	docs := map[string][]byte{
		"1 MB of [":          bytes.Repeat([]byte("["), 1<<20),
		"deep at the limit":  []byte(strings.Repeat(`{"a":`, 8) + "1" + strings.Repeat("}", 8)),
		"60 escaped keys":    bytes.Repeat([]byte(escapedKeys), 1),
		"long strings":       []byte(`["` + strings.Repeat("x", 8000) + `","` + strings.Repeat(`\u00e9`, 1300) + `"]`),
		"huge number":        []byte("[" + strings.Repeat("9", 8000) + "]"),
		"many tiny items":    []byte("[" + strings.TrimSuffix(strings.Repeat("{},", 1000), ",") + "]"),
		"a batch of events":  batchDoc(1000),
		"keys with escapes ": []byte(`[` + strings.TrimSuffix(strings.Repeat(escapedKeys+",", 100), ",") + `]`),
	}
	for name, doc := range docs {
		var before, after runtime.MemStats
		_, _ = jsonscan.Scan(doc, jsonscan.Options{Batch: true}) // warm the pool
		runtime.ReadMemStats(&before)
		for range 10 {
			_, _ = jsonscan.Scan(doc, jsonscan.Options{Batch: true})
		}
		runtime.ReadMemStats(&after)
		if perScan := (after.TotalAlloc - before.TotalAlloc) / 10; perScan > 4<<10 {
			t.Errorf("%s: Scan allocated %d bytes per call, want ≤ 4 KiB", name, perScan)
		}
	}
}

// FuzzScan compares Scan's verdict with encoding/json: with limits out of
// the way, a document is valid exactly when json.Valid says so, and its
// duplicate keys are exactly the keys of one object that strings.EqualFold
// calls equal, read with encoding/json's own token stream.
func FuzzScan(f *testing.F) {
	for _, s := range []string{
		`{"value":1,"VALUE":2}`, `{"val\u0075e":1,"value":2}`, `{"ſ":1,"S":2}`, `{"\u212a":1,"k":2}`,
		`[{"a":{"b":[1,2,{"c":null}]}}]`, `{"\ud800":1,"\udfff":2}`, `{"a":"\u0000"}`, `[1e5,-0.0,"x"]`,
		`{"a":1}{"a":1}`, `[[[[[[[[[[[[`, "{\"\xff\":1,\"\xfe\":2}",
	} {
		f.Add([]byte(s))
	}
	loose := jsonscan.Limits{MaxBytes: 1 << 30, MaxDepth: 10000, MaxStringBytes: 1 << 30, MaxKeys: 1 << 30, MaxElements: 1 << 30}
	f.Fuzz(func(t *testing.T, doc []byte) {
		issues, err := jsonscan.Scan(doc, jsonscan.Options{Limits: loose, MaxIssues: 1 << 30})
		if valid := json.Valid(doc); (err == nil) != valid {
			t.Fatalf("Scan(%q) = %v; encoding/json says valid=%v", doc, err, valid)
		}
		if err != nil {
			return
		}
		want := referenceDuplicates(t, doc)
		if len(issues) != len(want) {
			t.Fatalf("Scan(%q) found duplicates %+v, reference %q", doc, issues, want)
		}
		for i, is := range issues {
			if is.Code != jsonscan.IssueDuplicate || (utfValid(doc) && is.Key != want[i]) {
				t.Fatalf("Scan(%q) issue %d = %+v, reference key %q", doc, i, is, want[i])
			}
		}
		// The default limits only ever refuse more.
		if _, err := jsonscan.Scan(doc, jsonscan.Options{}); err != nil {
			var se *jsonscan.Error
			if !errors.As(err, &se) || se.Code == jsonscan.CodeSyntax {
				t.Fatalf("Scan(%q) with default limits = %v", doc, err)
			}
		}
	})
}

func utfValid(b []byte) bool { return strings.ToValidUTF8(string(b), "\ufffd") == string(b) }

// referenceDuplicates lists, in document order, every key equal under
// strings.EqualFold to an earlier key of the same object.
func referenceDuplicates(t *testing.T, doc []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber() // any number JSON allows, however large
	type level struct {
		object    bool
		expectKey bool
		keys      []string
	}
	var stack []*level
	var dups []string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return dups
		}
		if err != nil {
			t.Fatalf("reference decoder on %q: %v", doc, err)
		}
		var top *level
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.expectKey {
			if k, ok := tok.(string); ok {
				for _, prev := range top.keys {
					if strings.EqualFold(prev, k) {
						dups = append(dups, k)
						break
					}
				}
				top.keys = append(top.keys, k)
				top.expectKey = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &level{object: true, expectKey: true})
			continue
		case json.Delim('['):
			stack = append(stack, &level{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].expectKey = true
		}
	}
}

func BenchmarkScan(b *testing.B) {
	doc := batchDoc(1000)
	opt := jsonscan.Options{Batch: true, ItemKey: func(k []byte) bool { return len(k) > 0 }}
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := jsonscan.Scan(doc, opt); err != nil {
			b.Fatal(err)
		}
	}
}
