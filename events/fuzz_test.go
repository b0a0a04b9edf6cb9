package events_test

import (
	"bytes"
	"errors"
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

func fuzzDecode(t *testing.T, mediaType string, body []byte) {
	d := decoder()
	evs, err := d.Decode(mediaType, body)
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
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
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
