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

	"github.com/usagemeter/metering/events/jsonscan"
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

// Body error codes. Those of the structural limits are jsonscan's, so a
// scanner's code and the body error it becomes cannot drift apart.
const (
	CodeMalformed   = "malformed_body"
	CodeEmpty       = "empty_batch"
	CodeTooMany     = "batch_too_large"
	CodeInvalidUTF8 = "invalid_utf8"
	// CodeTooLarge: the body is over Limits.MaxBytes.
	CodeTooLarge = jsonscan.CodeTooLarge
	// CodeTooDeep: objects and arrays nest deeper than Limits.MaxDepth.
	CodeTooDeep = jsonscan.CodeTooDeep
	// CodeTooLong: a string or number is longer than Limits.MaxStringBytes.
	CodeTooLong = jsonscan.CodeTooLong
	// CodeTooManyKeys: an object has more than Limits.MaxKeys keys.
	CodeTooManyKeys = jsonscan.CodeTooManyKeys
	// CodeTooManyElements: an array inside an event has more elements
	// than a batch may have events.
	CodeTooManyElements = jsonscan.CodeTooManyElements
)

// Defaults of Limits.
const (
	// DefaultMaxBodyBytes is the largest body, 5 MiB (ingest's default
	// MAX_BODY_BYTES).
	DefaultMaxBodyBytes = jsonscan.DefaultMaxBytes
	// DefaultMaxDepth is the deepest nesting of objects and arrays. An
	// event needs 2 (itself and its properties), 3 in a batch array.
	DefaultMaxDepth = jsonscan.DefaultMaxDepth
	// DefaultMaxStringBytes is the longest string or number literal, as
	// written: room for the longest property value with every character
	// escaped.
	DefaultMaxStringBytes = jsonscan.DefaultMaxStringBytes
	// DefaultMaxKeys is the most keys one object may have.
	DefaultMaxKeys = jsonscan.DefaultMaxKeys
)

// Limits bound the structure of a body. The Decoder checks them (and the
// JSON syntax, and duplicate keys) in one linear pass without recursion
// before any other work, so no body can exhaust the stack or memory
// whatever the caller did to bound it. A zero field takes its default.
type Limits struct {
	// MaxBytes is the largest body; default DefaultMaxBodyBytes. Set it to
	// the server's own body limit when that is larger.
	MaxBytes int
	// MaxDepth is the deepest nesting of objects and arrays, the
	// top-level object or array being 1; default DefaultMaxDepth.
	MaxDepth int
	// MaxStringBytes is the longest string or number literal, in bytes as
	// written; default DefaultMaxStringBytes.
	MaxStringBytes int
	// MaxKeys is the most keys of one object; default DefaultMaxKeys.
	MaxKeys int
}

// Decoder turns request bodies into validated events. Its zero value
// accepts up to DefaultMaxBatch events within the default Limits and
// validates with Validator{}.
type Decoder struct {
	// MaxEvents bounds a batch; 0 means DefaultMaxBatch. It also bounds
	// any array inside an event.
	MaxEvents int
	// Validator checks each decoded event.
	Validator Validator
	// Limits bound the structure of a body; zero fields take the defaults.
	Limits Limits
}

// Decode parses body according to contentType (a Content-Type header value;
// empty means JSON) and validates every event. It returns all events, or:
// an error wrapping ErrUnsupportedMediaType; a *BodyError when the body is
// unusable as a whole (not JSON, or beyond d.Limits); a *ValidationError
// listing every field error of every event, by index, so that a client
// can fix them all at once.
//
// Keys are matched exactly as the contract spells them, after unescaping:
// "val\u0075e" is the field value, "VALUE" is an unknown field. A key sent
// twice in one object, compared after unescaping and in any case, is an
// error at every level (encoding/json would keep the last one).
func (d Decoder) Decode(contentType string, body []byte) ([]Event, error) {
	mediaType := MediaJSON
	if contentType != "" {
		mt, _, err := mime.ParseMediaType(contentType)
		if err != nil {
			return nil, fmt.Errorf("%w: %q", ErrUnsupportedMediaType, contentType)
		}
		mediaType = mt
	}
	if err := d.checkSize(body); err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, &BodyError{Code: CodeEmpty, Message: "the body is empty; send one event, a JSON array of events or NDJSON"}
	}
	if !utf8.Valid(body) {
		return nil, &BodyError{Code: CodeInvalidUTF8, Message: "the body is not valid UTF-8"}
	}
	switch mediaType {
	case MediaJSON:
		return d.decodeJSON(body)
	case MediaNDJSON, "application/jsonl", "application/json-seq":
		return d.decodeNDJSON(body)
	case MediaCloudEvent:
		return d.decodeCloudEvents(body, false)
	case MediaCloudEventBatch:
		return d.decodeCloudEvents(body, true)
	}
	return nil, fmt.Errorf("%w: %q; use %s, %s, %s or %s", ErrUnsupportedMediaType, mediaType,
		MediaJSON, MediaNDJSON, MediaCloudEvent, MediaCloudEventBatch)
}

func (d Decoder) checkSize(body []byte) error {
	if limit := d.scanOptions(false, nil).Limits.WithDefaults().MaxBytes; len(body) > limit {
		return &BodyError{Code: CodeTooLarge, Message: fmt.Sprintf("the body is %d bytes; at most %d are allowed, split it into smaller batches", len(body), limit)}
	}
	return nil
}

// scanOptions are the options of the structural pre-scan of a body (a
// batch when batch) whose items' own keys must pass itemKey.
func (d Decoder) scanOptions(batch bool, itemKey func([]byte) bool) jsonscan.Options {
	l := d.Limits
	return jsonscan.Options{
		Limits: jsonscan.Limits{MaxBytes: l.MaxBytes, MaxDepth: l.MaxDepth, MaxStringBytes: l.MaxStringBytes,
			MaxKeys: l.MaxKeys, MaxElements: d.maxEvents()},
		Batch: batch, ItemKey: itemKey}
}

// scanSyntaxError returns err as a *jsonscan.Error when it is a syntax
// error of a pre-scan (the input is not JSON, rather than beyond a limit).
func scanSyntaxError(err error) (*jsonscan.Error, bool) {
	var se *jsonscan.Error
	if errors.As(err, &se) && se.Code == jsonscan.CodeSyntax {
		return se, true
	}
	return nil, false
}

// scanError turns a pre-scan error into a *BodyError; what names the
// part of the body that was scanned ("event 3", "data"), or is empty for
// the whole body.
func (d Decoder) scanError(err error, batch bool, what string) error {
	var se *jsonscan.Error
	if !errors.As(err, &se) {
		return &BodyError{Code: CodeMalformed, Message: "the body cannot be read: " + err.Error()}
	}
	if se.Code == jsonscan.CodeTooManyElements && batch && se.Path == "" {
		return &BodyError{Code: CodeTooMany, Message: fmt.Sprintf("the batch has more than %d events; at most %d are allowed per request", d.maxEvents(), d.maxEvents())}
	}
	where := what
	if batch {
		where = fmt.Sprintf("event %d", se.Index)
	}
	if se.Path != "" {
		where = strings.TrimPrefix(where+", field "+se.Path, ", ")
	}
	if where != "" {
		where = " (" + where + ")"
	}
	// The limit codes are jsonscan's own (see the Code constants); only a
	// syntax error has a name of its own here.
	if _, syntax := scanSyntaxError(se); syntax {
		return &BodyError{Code: CodeMalformed, Message: fmt.Sprintf("the body is not valid JSON: %s at byte %d%s", se.Message, se.Offset, where)}
	}
	if se.Code == jsonscan.CodeTooDeep {
		return &BodyError{Code: se.Code, Message: fmt.Sprintf("the body nests objects and arrays too deep%s: at most %d levels, and an event needs 3 in a batch", where, d.scanOptions(false, nil).Limits.WithDefaults().MaxDepth)}
	}
	return &BodyError{Code: se.Code, Message: fmt.Sprintf("%s%s", se.Message, where)}
}

// eventKey reports whether key is one of an event's fields, spelled exactly.
func eventKey(key []byte) bool {
	switch string(key) {
	case "id", "tenant", "metric", "value", "time", "source", "properties":
		return true
	}
	return false
}

// keyRules say how the keys of one kind of item are named in errors: the
// names the contract knows, and what an unknown key is told.
type keyRules struct {
	known   []string
	unknown string
}

var (
	eventKeys = keyRules{eventFields, "unknown field; an event has id, tenant, metric, value, time, source and properties"}
	ceKeys    = keyRules{cloudEventAttributes, "is not a CloudEvents attribute name: attribute names are lower-case ASCII letters and digits"}
	dataKeys  = keyRules{}
)

// issueErrors turns the key issues of a pre-scan into field errors; index
// is added to each issue's own index (an NDJSON line's), and prefix to its
// path.
func issueErrors(issues []jsonscan.KeyIssue, index int, prefix string, rules keyRules) []FieldError {
	var errs []FieldError
	for _, is := range issues {
		fe := FieldError{Index: index + is.Index, Field: prefix + is.Path}
		switch {
		case is.Code == jsonscan.IssueDuplicate && is.Other == is.Key:
			fe.Message = "appears twice in the same object; send each field once"
		case is.Code == jsonscan.IssueDuplicate:
			fe.Message = fmt.Sprintf("appears twice in the same object, also as %q (keys are compared after unescaping and in any case); send each field once", is.Other)
		default:
			fe.Message = rules.unknown
			for _, f := range rules.known {
				if strings.EqualFold(f, is.Key) {
					fe.Message = fmt.Sprintf("%s; names are matched exactly, send %q", rules.unknown, f)
				}
			}
		}
		errs = append(errs, fe)
	}
	return errs
}

// validate validates every decoded event and returns them, or a
// *ValidationError with the key errors of the pre-scan (named as sent),
// the decoding errors errs and every validation error, these two renamed
// by rename (if not nil) to what the client sent. A field is reported
// once: a decoding error (wrong type, say) hides the range check of the
// same field, and an element that is not an object at all gets nothing more.
func (d Decoder) validate(evs []Event, keyErrs, errs []FieldError, rename func(string) string) ([]Event, error) {
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
	if len(errs) == 0 && len(keyErrs) == 0 {
		return evs, nil
	}
	if rename != nil {
		for i := range errs {
			errs[i].Field = rename(errs[i].Field)
		}
	}
	all := append(keyErrs, errs...)
	sortFieldErrors(all)
	return nil, &ValidationError{Errors: all}
}

func (d Decoder) maxEvents() int {
	if d.MaxEvents > 0 {
		return d.MaxEvents
	}
	return DefaultMaxBatch
}

// decodeJSON decodes one event object or a JSON array of them.
func (d Decoder) decodeJSON(body []byte) ([]Event, error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if trimmed[0] != '{' && trimmed[0] != '[' {
		return nil, &BodyError{Code: CodeMalformed, Message: "the body must be a JSON object or array of events (or NDJSON with Content-Type: application/x-ndjson)"}
	}
	batch := trimmed[0] == '['
	issues, err := jsonscan.Scan(body, d.scanOptions(batch, eventKey))
	if err != nil {
		return nil, d.scanError(err, batch, "")
	}
	keyErrs := issueErrors(issues, 0, "", eventKeys)
	if !batch {
		ev, errs := decodeObject(body, 0, len(issues) > 0)
		return d.validate([]Event{ev}, keyErrs, errs, nil)
	}
	// Fast path: the whole array in one pass, when no key is suspect:
	// read without reflection when every event has the common shape,
	// else with encoding/json.
	if len(issues) == 0 {
		ws, ok := scanWireArray(body)
		if !ok {
			ws = nil
			if err := json.Unmarshal(body, &ws); err != nil || mayHaveNullProperty(body, ws...) {
				ws = nil
			} else {
				ok = true
			}
		}
		if ok {
			if len(ws) == 0 {
				return nil, &BodyError{Code: CodeEmpty, Message: "the array has no events"}
			}
			evs := make([]Event, len(ws))
			var errs []FieldError
			for i := range ws {
				var fe []FieldError
				evs[i], fe = ws[i].event(i)
				errs = append(errs, fe...)
			}
			return d.validate(evs, nil, errs, nil)
		}
	}
	raws, err := splitArray(body)
	if err != nil {
		return nil, err
	}
	// An event with a key issue is read with exact names only.
	suspect := make(map[int]bool, len(issues))
	for _, is := range issues {
		suspect[is.Index] = true
	}
	evs, errs := decodeEach(raws, func(raw []byte, i int) (Event, []FieldError) {
		return decodeObject(raw, i, suspect[i])
	})
	return d.validate(evs, keyErrs, errs, nil)
}

// decodeEach decodes every element with decode, collecting all errors.
func decodeEach(raws []json.RawMessage, decode func([]byte, int) (Event, []FieldError)) ([]Event, []FieldError) {
	evs := make([]Event, len(raws))
	var errs []FieldError
	for i, raw := range raws {
		var fe []FieldError
		evs[i], fe = decode(raw, i)
		errs = append(errs, fe...)
	}
	return evs, errs
}

// splitArray splits a JSON array, already scanned, into its elements.
func splitArray(body []byte) ([]json.RawMessage, error) {
	var raws []json.RawMessage
	if err := json.Unmarshal(body, &raws); err != nil {
		return nil, &BodyError{Code: CodeMalformed, Message: "the body is not a JSON array: " + jsonErrorText(err)}
	}
	if len(raws) == 0 {
		return nil, &BodyError{Code: CodeEmpty, Message: "the array has no events"}
	}
	return raws, nil
}

// decodeNDJSON decodes one event object per line, blank lines skipped.
func (d Decoder) decodeNDJSON(body []byte) ([]Event, error) {
	n := 0
	for line := range bytes.SplitSeq(body, []byte{'\n'}) {
		if len(bytes.TrimSpace(line)) > 0 {
			n++
		}
	}
	if n > d.maxEvents() {
		return nil, &BodyError{Code: CodeTooMany, Message: fmt.Sprintf("the batch has %d events; at most %d are allowed per request", n, d.maxEvents())}
	}
	evs := make([]Event, 0, n)
	var keyErrs, errs []FieldError
	opt := d.scanOptions(false, eventKey)
	for line := range bytes.SplitSeq(body, []byte{'\n'}) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		i := len(evs)
		issues, err := jsonscan.Scan(line, opt)
		if err != nil {
			if se, ok := scanSyntaxError(err); ok {
				evs = append(evs, Event{})
				errs = append(errs, FieldError{Index: i, Message: "must be a JSON object: " + se.Error()})
				continue
			}
			return nil, d.scanError(err, false, fmt.Sprintf("event %d", i))
		}
		keyErrs = append(keyErrs, issueErrors(issues, i, "", eventKeys)...)
		ev, fe := decodeObject(line, i, len(issues) > 0)
		evs = append(evs, ev)
		errs = append(errs, fe...)
	}
	return d.validate(evs, keyErrs, errs, nil)
}

// cloudEventAttribute reports whether key may name a CloudEvents attribute
// in structured mode: lower-case ASCII letters and digits (CloudEvents
// 1.0, section 3.1.1), or data_base64, the JSON format's binary data.
func cloudEventAttribute(key []byte) bool {
	if len(key) == 0 {
		return false
	}
	if string(key) == "data_base64" {
		return true
	}
	for _, c := range key {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// cloudEventAttributes are the attributes the mapping reads, to suggest
// the exact spelling of a near miss.
var cloudEventAttributes = []string{"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}

// decodeCloudEvents decodes one structured-mode CloudEvent, or a batch.
func (d Decoder) decodeCloudEvents(body []byte, batch bool) ([]Event, error) {
	issues, err := jsonscan.Scan(body, d.scanOptions(batch, cloudEventAttribute))
	if err != nil {
		if se, ok := scanSyntaxError(err); ok && !batch {
			return d.validate([]Event{{}}, nil, []FieldError{{Message: "must be a CloudEvents 1.0 JSON object: " + se.Error()}}, nil)
		}
		return nil, d.scanError(err, batch, "")
	}
	keyErrs := issueErrors(issues, 0, "", ceKeys)
	raws := []json.RawMessage{body}
	if batch {
		if raws, err = splitArray(body); err != nil {
			return nil, err
		}
	}
	evs, errs := decodeEach(raws, decodeCloudEvent)
	return d.validate(evs, keyErrs, errs, cloudEventField)
}

// sortFieldErrors orders errors by event index, keeping each event's
// errors in the order they were found.
func sortFieldErrors(errs []FieldError) {
	slices.SortStableFunc(errs, func(a, b FieldError) int { return cmp.Compare(a.Index, b.Index) })
}
