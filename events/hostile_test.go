package events_test

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
)

// Regression tests for hostile bodies (issue "Hostile clients"): each
// reproduces a probe that crashed or fooled the decoder.

// TestDecodeFiveMillionBrackets: one body of five million [ killed the
// process with a fatal stack overflow, which no recover catches, in every
// media type and in Event.UnmarshalJSON (raw Kafka records). Surviving is
// the test; each must also fail fast with too_deep.
func TestDecodeFiveMillionBrackets(t *testing.T) {
	body := bytes.Repeat([]byte("["), 5_000_000)
	d := decoder()
	cases := map[string]func() error{
		"json":             func() error { _, err := d.Decode(events.MediaJSON, body); return err },
		"ndjson":           func() error { _, err := d.Decode(events.MediaNDJSON, body); return err },
		"cloudevent":       func() error { _, err := d.Decode(events.MediaCloudEvent, body); return err },
		"cloudevent batch": func() error { _, err := d.Decode(events.MediaCloudEventBatch, body); return err },
		"cloudevent binary data": func() error {
			_, err := d.DecodeHTTP(binaryHeaders(), append([]byte(`{"value":1,"k":`), body...))
			return err
		},
		"an object of objects": func() error {
			_, err := d.Decode(events.MediaJSON, []byte(strings.Repeat(`{"a":`, 1_000_000)))
			return err
		},
		"UnmarshalJSON": func() error { var e events.Event; return e.UnmarshalJSON(append([]byte(`{"properties":`), body...)) },
	}
	for name, decode := range cases {
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- decode() }() // a fresh goroutine: a small stack to overflow
		err := <-done
		var be *events.BodyError
		if !errors.As(err, &be) || be.Code != events.CodeTooDeep {
			t.Errorf("%s: err = %v, want body error %s", name, err, events.CodeTooDeep)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: took %s", name, d)
		}
	}
}

// TestDecodeDuplicateKeysInAnyCase: {"value":1,"VALUE":900} and an escaped
// "val\u0075e" were accepted and 900 published, in every media type and in
// raw Kafka records; they must be refused.
func TestDecodeDuplicateKeysInAnyCase(t *testing.T) {
	t.Parallel()
	const head = `"id":"e1","tenant":"acme","metric":"api_calls","time":"2026-11-21T18:59:00Z"`
	const ceHead = `"specversion":"1.0","id":"e1","source":"svc","type":"api_calls","subject":"acme","time":"2026-11-21T18:59:00Z"`
	type probe struct{ name, contentType, body string }
	var probes []probe
	for _, dup := range []string{`"VALUE":900`, `"Value":900`, `"val\u0075e":900`, `"V\u0041LUE":900`} {
		obj := `{` + head + `,"value":1,` + dup + `}`
		probes = append(probes,
			probe{"object " + dup, events.MediaJSON, obj},
			probe{"array " + dup, events.MediaJSON, "[" + okEvent + "," + obj + "]"},
			probe{"ndjson " + dup, events.MediaNDJSON, okEvent + "\n" + obj},
			probe{"cloudevent data " + dup, events.MediaCloudEvent, `{` + ceHead + `,"data":{"value":1,` + dup + `}}`},
			probe{"cloudevents batch data " + dup, events.MediaCloudEventBatch, `[{` + ceHead + `,"data":{"value":1,` + dup + `}}]`},
			probe{"properties " + dup, events.MediaJSON, `{` + head + `,"value":1,"properties":{"value":"1",` + strings.Replace(dup, "900", `"900"`, 1) + `}}`},
		)
	}
	probes = append(probes, probe{"cloudevent attribute", events.MediaCloudEvent,
		`{` + ceHead + `,"SUBJECT":"other","data":{"value":1}}`})
	for _, p := range probes {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			evs, err := decoder().Decode(p.contentType, []byte(p.body))
			if _, ok := events.AsValidationError(err); !ok {
				t.Fatalf("Decode = %+v, %v; want a *ValidationError", evs, err)
			}
			if p.contentType != events.MediaJSON || p.body[0] != '{' {
				return
			}
			var e events.Event
			if err := e.UnmarshalJSON([]byte(p.body)); err == nil {
				t.Fatalf("UnmarshalJSON accepted %s as %+v", p.body, e)
			}
		})
	}
	h := binaryHeaders()
	if _, err := decoder().DecodeHTTP(h, []byte(`{"value":1,"VALUE":900}`)); err == nil {
		t.Fatal("binary-mode data with value twice accepted")
	}
}

// TestDecodeKeysMatchedExactly: encoding/json matched "Value" or "ſource"
// (U+017F folds to s) to the contract's fields; only exact names count.
func TestDecodeKeysMatchedExactly(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		`{"id":"e1","tenant":"acme","metric":"api_calls","Value":1,"time":"2026-11-21T18:59:00Z"}`,
		`{"ID":"e1","tenant":"acme","metric":"api_calls","value":1,"time":"2026-11-21T18:59:00Z"}`,
		`{"id":"e1","tenant":"acme","metric":"api_calls","value":1,"time":"2026-11-21T18:59:00Z","ſource":"x"}`,
		`[{"id":"e1","tenant":"acme","metric":"api_calls","value":1,"TIME":"2026-11-21T18:59:00Z"}]`,
	} {
		if evs, err := decoder().Decode(events.MediaJSON, []byte(body)); err == nil {
			t.Errorf("Decode(%s) = %+v, want it refused", body, evs)
		}
	}
	ok := `{"id":"e1","tenant":"acme","metric":"api_calls","val\u0075e":7,"time":"2026-11-21T18:59:00Z"}`
	if evs, err := decoder().Decode(events.MediaJSON, []byte(ok)); err != nil || evs[0].Value != 7 {
		t.Errorf("an escaped exact key: Decode = %+v, %v; want value 7", evs, err)
	}
}

// TestValidateRefusesC1Controls: C1 controls (U+0080-U+009F) were accepted
// where C0 controls and DEL are refused.
func TestValidateRefusesC1Controls(t *testing.T) {
	t.Parallel()
	v := events.Validator{Now: func() time.Time { return now }}
	for _, r := range []rune{0x00, 0x1f, 0x7f, 0x80, 0x85, 0x9b, 0x9f} {
		c := string(r)
		for field, mutate := range map[string]func(*events.Event){
			"source":         func(e *events.Event) { e.Source = "svc" + c },
			"properties":     func(e *events.Event) { e.Properties = map[string]string{"k" + c: "v"} },
			"properties.k":   func(e *events.Event) { e.Properties = map[string]string{"k": "v" + c} },
			"id":             func(e *events.Event) { e.ID = "e" + c },
			"tenant":         func(e *events.Event) { e.Tenant = "acme" + c },
			"metric (too)":   func(e *events.Event) { e.Metric = "m" + c },
			"properties.key": func(e *events.Event) { e.Properties = map[string]string{c: "v"} },
		} {
			e := validEvent()
			mutate(&e)
			if errs := v.Validate(0, e); len(errs) == 0 {
				t.Errorf("%U in %s accepted", r, field)
			}
		}
	}
	e := validEvent()
	e.Properties = map[string]string{"k": "\u00a0\u2028é€"}
	if errs := v.Validate(0, e); len(errs) > 0 {
		t.Errorf("printable non-ASCII refused: %v", errs)
	}
}

// Decoding a body allocates at most maxBytesPerInputByte per byte of the
// body plus maxBytesFixed, room for the field errors of a full batch of
// 1000 invalid events (at most about 4.3 KiB each). Measured with
// go test -run TestDecodeMemoryPerByte -v ./events/: large bodies 1.2 to 5
// bytes per byte (16 for valid events read as CloudEvents, each an
// error), at most 4.3 MB in all for 1000 tiny invalid events. The old
// recursive duplicate scan allocated about 440 bytes per byte on a
// million [, and five million crashed the process.
const (
	maxBytesPerInputByte = 24
	maxBytesFixed        = 6 << 20
)

// adversarialBodies are the bodies of TestDecodeMemoryPerByte and seeds
// of the fuzz targets.
func adversarialBodies() map[string][]byte {
	manyKeys := make([]string, 64)
	for i := range manyKeys {
		manyKeys[i] = fmt.Sprintf(`"k\u00%02x%d":"v"`, 0x41+i%26, i)
	}
	array, ndjson := benchBody(1000)
	bigProps, numberProps := make([]string, 32), make([]string, 32)
	for i := range bigProps {
		bigProps[i] = fmt.Sprintf(`"k%d":"%s"`, i, strings.Repeat("x", 1000))
		numberProps[i] = fmt.Sprintf(`"k%d":%s`, i, strings.Repeat("1", 1000))
	}
	bigEvent := `{"id":"e1","tenant":"acme","metric":"api_calls","value":1,"time":"2026-11-21T18:59:00Z","properties":{` + strings.Join(bigProps, ",") + `}}`
	numberEvent := strings.Replace(bigEvent, strings.Join(bigProps, ","), strings.Join(numberProps, ","), 1)
	return map[string][]byte{
		"1 MB of [":                bytes.Repeat([]byte("["), 1<<20),
		"1 MB of {\"a\":":          bytes.Repeat([]byte(`{"a":`), 200_000),
		"depth at the limit":       []byte(`[[[[[[[[` + okEvent + `]]]]]]]]`),
		"depth past the limit":     []byte(`[[[[[[[[[` + okEvent + `]]]]]]]]]`),
		"64 escaped keys":          []byte(`{"id":"a","properties":{` + strings.Join(manyKeys, ",") + `}}`),
		"1000 tiny events":         []byte("[" + strings.TrimSuffix(strings.Repeat(`{},`, 1000), ",") + "]"),
		"1000 tiny ndjson lines":   bytes.Repeat([]byte("{}\n"), 1000),
		"1000 one-key events":      []byte("[" + strings.TrimSuffix(strings.Repeat(`{"id":1},`, 1000), ",") + "]"),
		"long strings":             []byte(`{"id":"` + strings.Repeat("x", 8000) + `","source":"` + strings.Repeat(`\u00e9`, 1300) + `"}`),
		"string past the limit":    []byte(`{"id":"` + strings.Repeat("x", 9000) + `"}`),
		"huge number":              []byte(`{"value":` + strings.Repeat("9", 8000) + `}`),
		"number past the limit":    []byte(`{"value":` + strings.Repeat("9", 100_000) + `}`),
		"1000 elements in a value": []byte(`{"properties":{"a":[` + strings.TrimSuffix(strings.Repeat("0,", 1000), ",") + `]}}`),
		"duplicates everywhere":    []byte("[" + strings.TrimSuffix(strings.Repeat(`{"a":1,"A":2,"properties":{"k":"1","K":"2"}},`, 1000), ",") + "]"),
		"150 events of 32 KB":      []byte("[" + strings.TrimSuffix(strings.Repeat(bigEvent+",", 150), ",") + "]"),
		"150 events of 32 numbers": []byte("[" + strings.TrimSuffix(strings.Repeat(numberEvent+",", 150), ",") + "]"),
		"valid batch":              array,
		"valid ndjson":             ndjson,
	}
}

// TestDecodeMemoryPerByte: memory per request is bounded by the body's
// size, whatever its shape, in every media type.
func TestDecodeMemoryPerByte(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's own allocations skew the measure")
	}
	// Stack is not in TotalAlloc: cap it instead. Recursing on
	// input-controlled depth kills the test binary, a failure; decoding
	// within MaxDepth needs a few kilobytes.
	defer debug.SetMaxStack(debug.SetMaxStack(maxStack))
	d := decoder()
	check := func(what string, n int, f func()) {
		allocated := measure(f)
		t.Logf("%-44s %8d bytes: %10.0f allocated, %7.2f per byte", what, n, allocated, allocated/float64(n))
		if allocated > maxBytesPerInputByte*float64(n)+maxBytesFixed {
			t.Errorf("%s: %.0f bytes allocated for a %d-byte body, want ≤ %d per byte + %d", what, allocated, n, maxBytesPerInputByte, maxBytesFixed)
		}
	}
	for name, body := range adversarialBodies() {
		for _, mt := range []string{events.MediaJSON, events.MediaNDJSON, events.MediaCloudEvent, events.MediaCloudEventBatch} {
			check(name+" as "+mt, len(body), func() { _, _ = d.Decode(mt, body) })
		}
		if body[0] == '{' {
			var e events.Event
			check(name+" with UnmarshalJSON", len(body), func() { _ = e.UnmarshalJSON(body) })
		}
	}
}

// maxStack is the largest goroutine stack while decoding adversarial
// bodies (the default is 1 GB); the old recursive scan needed about 440
// bytes per level, so 440 MB for a million.
const maxStack = 16 << 20

// measure returns the bytes f allocates, averaged over a few runs.
func measure(f func()) float64 {
	const runs = 3
	f() // warm up pools
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return float64(after.TotalAlloc-before.TotalAlloc) / runs
}
