package events

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"slices"
	"strings"
	"unicode/utf8"
)

// Media types the ingest API and Decoder accept.
const (
	MediaJSON            = "application/json"
	MediaNDJSON          = "application/x-ndjson"
	MediaCloudEvent      = "application/cloudevents+json"
	MediaCloudEventBatch = "application/cloudevents-batch+json"
)

// DefaultMaxBatch is the most events one request may carry.
const DefaultMaxBatch = 1000

// ErrUnsupportedMediaType is returned for a media type Decode does not know.
var ErrUnsupportedMediaType = errors.New("unsupported media type")

// BodyError means a body as a whole cannot be read as events, for example
// because it is not JSON. Code is a stable machine-readable reason.
type BodyError struct {
	Code    string
	Message string
}

func (e *BodyError) Error() string { return e.Message }

// Body error codes.
const (
	CodeMalformed   = "malformed_body"
	CodeEmpty       = "empty_batch"
	CodeTooMany     = "batch_too_large"
	CodeInvalidUTF8 = "invalid_utf8"
)

// Decoder turns request bodies into validated events. Its zero value
// accepts up to DefaultMaxBatch events and validates with Validator{}.
type Decoder struct {
	// MaxEvents bounds a batch; 0 means DefaultMaxBatch.
	MaxEvents int
	// Validator checks each decoded event.
	Validator Validator
}

// Decode parses body according to contentType (a Content-Type header value;
// empty means JSON) and validates every event. It returns all events, or:
// an error wrapping ErrUnsupportedMediaType; a *BodyError when the body is
// unusable as a whole; a *ValidationError listing every field error of
// every event, by index, so that a client can fix them all at once.
func (d Decoder) Decode(contentType string, body []byte) ([]Event, error) {
	mediaType := MediaJSON
	if contentType != "" {
		mt, _, err := mime.ParseMediaType(contentType)
		if err != nil {
			return nil, fmt.Errorf("%w: %q", ErrUnsupportedMediaType, contentType)
		}
		mediaType = mt
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, &BodyError{Code: CodeEmpty, Message: "the body is empty; send one event, a JSON array of events or NDJSON"}
	}
	if !utf8.Valid(body) {
		return nil, &BodyError{Code: CodeInvalidUTF8, Message: "the body is not valid UTF-8"}
	}
	var (
		evs    []Event
		errs   []FieldError
		rename func(string) string
		err    error
	)
	switch mediaType {
	case MediaJSON:
		evs, errs, err = d.decodeJSON(body)
	case MediaNDJSON, "application/jsonl", "application/json-seq":
		evs, errs, err = d.decodeNDJSON(body)
	case MediaCloudEvent:
		evs, errs = decodeEach([][]byte{body}, decodeCloudEvent)
		rename = cloudEventField
	case MediaCloudEventBatch:
		var raws []json.RawMessage
		if raws, err = d.splitArray(body); err == nil {
			evs, errs = decodeEach(raws, decodeCloudEvent)
			rename = cloudEventField
		}
	default:
		return nil, fmt.Errorf("%w: %q; use %s, %s, %s or %s", ErrUnsupportedMediaType, mediaType,
			MediaJSON, MediaNDJSON, MediaCloudEvent, MediaCloudEventBatch)
	}
	if err != nil {
		return nil, err
	}
	// A field sent twice is ambiguous (encoding/json keeps the last):
	// reject it, named, with the event's index.
	if mediaType == MediaNDJSON || mediaType == "application/jsonl" || mediaType == "application/json-seq" {
		line := 0
		for l := range bytes.SplitSeq(body, []byte{'\n'}) {
			if len(bytes.TrimSpace(l)) == 0 {
				continue
			}
			for _, fe := range duplicateKeys(l) {
				fe.Index = line
				errs = append(errs, fe)
			}
			line++
		}
	} else {
		errs = append(errs, duplicateKeys(body)...)
	}
	return d.validate(evs, errs, rename)
}

// validate validates every decoded event and returns them, or a
// *ValidationError with the decoding errors errs and every validation
// error, each field renamed by rename (if not nil) to what the client sent.
// A field is reported once: a decoding error (wrong type, say) hides the
// range check of the same field, and an element that is not an object at
// all gets nothing more.
func (d Decoder) validate(evs []Event, errs []FieldError, rename func(string) string) ([]Event, error) {
	decoded := make(map[FieldError]bool, len(errs))
	for _, fe := range errs {
		decoded[FieldError{Index: fe.Index, Field: fe.Field}] = true
	}
	for i, e := range evs {
		if decoded[FieldError{Index: i}] {
			continue
		}
		for _, fe := range d.Validator.Validate(i, e) {
			if !decoded[FieldError{Index: i, Field: fe.Field}] {
				errs = append(errs, fe)
			}
		}
	}
	if len(errs) > 0 {
		if rename != nil {
			for i := range errs {
				errs[i].Field = rename(errs[i].Field)
			}
		}
		sortFieldErrors(errs)
		return nil, &ValidationError{Errors: errs}
	}
	return evs, nil
}

func (d Decoder) maxEvents() int {
	if d.MaxEvents > 0 {
		return d.MaxEvents
	}
	return DefaultMaxBatch
}

func (d Decoder) tooMany(n int) error {
	return &BodyError{Code: CodeTooMany, Message: fmt.Sprintf("the batch has %d events; at most %d are allowed per request", n, d.maxEvents())}
}

func (d Decoder) decodeJSON(body []byte) ([]Event, []FieldError, error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) > 0 && trimmed[0] == '{' {
		ev, errs := decodeObject(body, 0)
		if len(errs) == 1 && errs[0].Field == "" {
			return nil, nil, &BodyError{Code: CodeMalformed, Message: "the body is not a JSON object: " + strings.TrimPrefix(errs[0].Message, "must be a JSON object: ")}
		}
		return []Event{ev}, errs, nil
	}
	if len(trimmed) == 0 || trimmed[0] != '[' {
		return nil, nil, &BodyError{Code: CodeMalformed, Message: "the body must be a JSON object or array of events (or NDJSON with Content-Type: application/x-ndjson)"}
	}
	// Fast path: the whole array in one pass.
	var ws []wireEvent
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ws); err == nil && !hasTrailing(dec) && !mayHaveNullProperty(body, ws...) {
		if len(ws) > d.maxEvents() {
			return nil, nil, d.tooMany(len(ws))
		}
		if len(ws) == 0 {
			return nil, nil, &BodyError{Code: CodeEmpty, Message: "the array has no events"}
		}
		evs := make([]Event, len(ws))
		var errs []FieldError
		for i := range ws {
			var fe []FieldError
			evs[i], fe = ws[i].event(i)
			errs = append(errs, fe...)
		}
		return evs, errs, nil
	}
	raws, err := d.splitArray(body)
	if err != nil {
		return nil, nil, err
	}
	evs, errs := decodeEach(raws, decodeObject)
	return evs, errs, nil
}

// decodeEach decodes every element with decode, collecting all errors.
func decodeEach[T ~[]byte](items []T, decode func([]byte, int) (Event, []FieldError)) ([]Event, []FieldError) {
	evs := make([]Event, len(items))
	var errs []FieldError
	for i, item := range items {
		var fe []FieldError
		evs[i], fe = decode(item, i)
		errs = append(errs, fe...)
	}
	return evs, errs
}

// splitArray splits a JSON array into its elements, enforcing the batch bound.
func (d Decoder) splitArray(body []byte) ([]json.RawMessage, error) {
	var raws []json.RawMessage
	if err := json.Unmarshal(body, &raws); err != nil {
		return nil, &BodyError{Code: CodeMalformed, Message: "the body is not a JSON array: " + jsonErrorText(err)}
	}
	if len(raws) == 0 {
		return nil, &BodyError{Code: CodeEmpty, Message: "the array has no events"}
	}
	if len(raws) > d.maxEvents() {
		return nil, d.tooMany(len(raws))
	}
	return raws, nil
}

func (d Decoder) decodeNDJSON(body []byte) ([]Event, []FieldError, error) {
	lines := make([][]byte, 0, bytes.Count(body, []byte{'\n'})+1)
	for line := range bytes.SplitSeq(body, []byte{'\n'}) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		lines = append(lines, line)
	}
	if len(lines) > d.maxEvents() {
		return nil, nil, d.tooMany(len(lines))
	}
	evs, errs := decodeEach(lines, decodeObject)
	return evs, errs, nil
}

// sortFieldErrors orders errors by event index, keeping each event's
// errors in the order they were found.
func sortFieldErrors(errs []FieldError) {
	slices.SortStableFunc(errs, func(a, b FieldError) int { return cmp.Compare(a.Index, b.Index) })
}
