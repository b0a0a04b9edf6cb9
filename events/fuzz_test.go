package events_test

import (
	"bytes"
	"errors"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/usagemeter/metering/events"
)

// The fuzz targets check, for any body, that decoding never panics, that
// failures are one of the documented error types, and that every accepted
// event re-encodes canonically and decodes back to the same bytes.
// Their corpora live in testdata/fuzz and run as regression tests.

var fuzzSeeds = []string{
	okEvent,
	"[" + okEvent + "," + okEvent + "]",
	`{"id":"a","tenant":"t","metric":"m","value":9007199254740992,"time":"2026-11-21T18:59:00.123456789+01:00","source":"s","properties":{"k":"v","é":"\u2028"}}`,
	`{"id":"a","tenant":"t","metric":"m","value":1.0,"time":"2026-11-21T18:59:00Z"}`,
	`{"id":"a","id":"b","tenant":"t","metric":"m","value":1,"time":"2026-11-21T18:59:00Z"}`,
	`[{"specversion":"1.0","id":"e1","source":"svc","type":"api_calls","subject":"acme","time":"2026-11-21T18:59:00Z","data":{"value":1,"region":"eu"}}]`,
	`{"specversion":"1.0","id":"e1","source":"svc","type":"api_calls","subject":"acme","time":"2026-11-21T18:59:00Z","data":{"value":1,"region":"eu"}}`,
	okEvent + "\n" + okEvent,
	"[]", "{}", "null", `"x"`, "[1,2]", "\xff",
}

// withSmallStack makes the fuzz targets' process die, a finding, if
// decoding ever recurses on input-controlled depth: the default maximum
// stack is 1 GB, and any depth within Limits needs a few kilobytes.
func withSmallStack(f *testing.F) {
	old := debug.SetMaxStack(maxStack)
	f.Cleanup(func() { debug.SetMaxStack(old) })
}

// boundedMemory fails t if decode allocates more than the bound of
// TestDecodeMemoryPerByte for an n-byte body.
func boundedMemory(t *testing.T, n int, decode func()) {
	if raceEnabled {
		decode()
		return
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	decode()
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; float64(got) > maxBytesPerInputByte*float64(n)+maxBytesFixed {
		t.Fatalf("decoding %d bytes allocated %d bytes, more than %d per byte + %d", n, got, maxBytesPerInputByte, maxBytesFixed)
	}
}

func fuzzDecode(t *testing.T, mediaType string, body []byte) {
	d := decoder()
	var evs []events.Event
	var err error
	boundedMemory(t, len(body), func() { evs, err = d.Decode(mediaType, body) })
	if err != nil {
		var be *events.BodyError
		if _, ok := events.AsValidationError(err); !ok && !errors.As(err, &be) {
			t.Fatalf("Decode returned an undocumented error type %T: %v", err, err)
		}
		return
	}
	if len(evs) == 0 || len(evs) > events.DefaultMaxBatch {
		t.Fatalf("Decode accepted %d events", len(evs))
	}
	for _, ev := range evs {
		canon := ev.AppendJSON(nil)
		back, err := d.Decode(events.MediaJSON, canon)
		if err != nil {
			t.Fatalf("canonical encoding %s of an accepted event does not decode: %v", canon, err)
		}
		if again := back[0].AppendJSON(nil); !bytes.Equal(again, canon) {
			t.Fatalf("canonical encoding not stable:\n%s\n%s", canon, again)
		}
		if _, clash := ev.Properties["value"]; clash {
			continue
		}
		ce, err := ev.AppendCloudEvent(nil)
		if err != nil {
			t.Fatalf("AppendCloudEvent: %v", err)
		}
		fromCE, err := d.Decode(events.MediaCloudEvent, ce)
		if err != nil {
			if ev.Source == "" {
				continue
			}
			t.Fatalf("CloudEvent %s of an accepted event does not decode: %v", ce, err)
		}
		if ev.Source != "" && !bytes.Equal(fromCE[0].AppendJSON(nil), canon) {
			t.Fatalf("CloudEvent round trip changed the event:\n%s\n%s", canon, fromCE[0].AppendJSON(nil))
		}
	}
}

func addSeeds(f *testing.F) {
	withSmallStack(f)
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	for _, b := range adversarialBodies() {
		if len(b) <= 64<<10 {
			f.Add(b)
		}
	}
	for _, b := range conformanceBodies() {
		f.Add(b)
	}
}

// FuzzUnmarshalJSON reads any bytes as a raw Kafka record is read: never
// a panic or a stack overflow, memory bounded, an event or a documented
// error; an accepted event re-encodes canonically and reads back the same.
func FuzzUnmarshalJSON(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var e events.Event
		var err error
		boundedMemory(t, len(b), func() { err = e.UnmarshalJSON(b) })
		if err != nil {
			var be *events.BodyError
			if _, ok := events.AsValidationError(err); !ok && !errors.As(err, &be) {
				t.Fatalf("UnmarshalJSON returned an undocumented error type %T: %v", err, err)
			}
			return
		}
		canon := e.AppendJSON(nil)
		var back events.Event
		if err := back.UnmarshalJSON(canon); err != nil {
			if e.Validate() == nil {
				t.Fatalf("canonical encoding %s of a valid event does not read back: %v", canon, err)
			}
			return
		}
		if again := back.AppendJSON(nil); !bytes.Equal(again, canon) {
			t.Fatalf("canonical encoding not stable:\n%s\n%s", canon, again)
		}
	})
}

func FuzzDecodeJSON(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, events.MediaJSON, body) })
}

func FuzzDecodeNDJSON(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, events.MediaNDJSON, body) })
}

func FuzzDecodeCloudEvent(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, events.MediaCloudEvent, body) })
}

func FuzzDecodeCloudEventBatch(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, events.MediaCloudEventBatch, body) })
}
