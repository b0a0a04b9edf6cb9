package events_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
)

// conformanceVector is one entry of testdata/conformance/decode.json,
// shared with the aggregator and the SDKs (see its README).
type conformanceVector struct {
	Name        string `json:"name"`
	ContentType string `json:"content_type"`
	Body        string `json:"body"`
	Want        struct {
		Events []string `json:"events"`
		Errors []struct {
			Index int    `json:"index"`
			Field string `json:"field"`
		} `json:"errors"`
		BodyError string `json:"body_error"`
	} `json:"want"`
}

func conformanceVectors(t testing.TB) []conformanceVector {
	t.Helper()
	vs, err := readConformanceVectors()
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

func readConformanceVectors() ([]conformanceVector, error) {
	b, err := os.ReadFile("../testdata/conformance/decode.json")
	if err != nil {
		return nil, err
	}
	var vs []conformanceVector
	if err := json.Unmarshal(b, &vs); err != nil {
		return nil, fmt.Errorf("decode.json: %w", err)
	}
	return vs, nil
}

// conformanceBodies are the vectors' bodies, seeds of the fuzz targets.
func conformanceBodies() [][]byte {
	vs, _ := readConformanceVectors()
	var bodies [][]byte
	for _, v := range vs {
		bodies = append(bodies, []byte(v.Body))
	}
	return bodies
}

// TestConformanceDecode runs every shared vector through Decoder.Decode.
func TestConformanceDecode(t *testing.T) {
	t.Parallel()
	for _, v := range conformanceVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			evs, err := decoder().Decode(v.ContentType, []byte(v.Body))
			checkVector(t, v, evs, err)
		})
	}
}

// TestConformanceUnmarshalJSON reads the single-object vectors as raw
// Kafka records are read (Event.UnmarshalJSON, then Validate): a record
// is accepted exactly when the request would be, as the same event.
func TestConformanceUnmarshalJSON(t *testing.T) {
	t.Parallel()
	for _, v := range conformanceVectors(t) {
		if v.ContentType != events.MediaJSON || v.Body == "" || v.Body[0] != '{' {
			continue
		}
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			var ev events.Event
			err := ev.UnmarshalJSON([]byte(v.Body))
			if err == nil {
				if errs := (events.Validator{Now: func() time.Time { return now }}).Validate(0, ev); len(errs) > 0 {
					err = &events.ValidationError{Errors: errs}
				}
			}
			if len(v.Want.Events) > 0 {
				if err != nil {
					t.Fatalf("UnmarshalJSON+Validate: %v, want %s", err, v.Want.Events[0])
				}
				if got := string(ev.AppendJSON(nil)); got != v.Want.Events[0] {
					t.Fatalf("event = %s, want %s", got, v.Want.Events[0])
				}
				return
			}
			if err == nil {
				t.Fatalf("record accepted as %s, want it refused", ev.AppendJSON(nil))
			}
		})
	}
}

func checkVector(t *testing.T, v conformanceVector, evs []events.Event, err error) {
	t.Helper()
	switch {
	case v.Want.Events != nil:
		if err != nil {
			t.Fatalf("Decode: %v", err)
		}
		var got []string
		for _, e := range evs {
			got = append(got, string(e.AppendJSON(nil)))
		}
		if !slices.Equal(got, v.Want.Events) {
			t.Fatalf("events = %q, want %q", got, v.Want.Events)
		}
	case v.Want.BodyError != "":
		var be *events.BodyError
		if !errors.As(err, &be) || be.Code != v.Want.BodyError {
			t.Fatalf("Decode = %v, want body error %s", err, v.Want.BodyError)
		}
	default:
		ve, ok := events.AsValidationError(err)
		if !ok {
			t.Fatalf("Decode = %v, want field errors %v", err, v.Want.Errors)
		}
		var got, want []string
		for _, fe := range ve.Errors {
			got = append(got, fmt.Sprintf("%d:%s", fe.Index, fe.Field))
		}
		for _, fe := range v.Want.Errors {
			want = append(want, fmt.Sprintf("%d:%s", fe.Index, fe.Field))
		}
		slices.Sort(got)
		got = slices.Compact(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("errors = %q, want %q\n%v", got, want, ve)
		}
	}
}
