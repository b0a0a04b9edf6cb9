package events

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/usagemeter/metering/events/jsonscan"
)

// CloudEvents HTTP binary content mode (the default of the official
// SDKs): the attributes travel as ce-* headers and the body is the data.
// The mapping is the one of structured mode: ce-id→ID, ce-subject→Tenant,
// ce-type→Metric, ce-time→Time, ce-source→Source, data.value→Value, every
// other data member (a string) → Properties. Content-Type is the
// datacontenttype and must be application/json; other ce-* headers
// (extensions, dataschema) are accepted and ignored.

// HeaderCloudEventSpecVersion marks a request as one CloudEvent in HTTP
// binary content mode.
const HeaderCloudEventSpecVersion = "Ce-Specversion"

// IsCloudEventBinary reports whether a request with header h carries one
// CloudEvent in HTTP binary content mode: it has a ce-specversion header
// and its Content-Type is not a CloudEvents event format
// (application/cloudevents...), since structured and batched requests may
// repeat their attributes as headers. Header names match in any case.
func IsCloudEventBinary(h http.Header) bool {
	if len(headerValues(h, "ce-specversion")) == 0 {
		return false
	}
	ct := headerValues(h, "content-type")
	if len(ct) == 0 {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct[0])
	return err != nil || !strings.HasPrefix(mt, "application/cloudevents")
}

// DecodeHTTP decodes the body of an HTTP request with header h in any form
// the ingest API accepts: one CloudEvent in binary content mode when
// IsCloudEventBinary(h), otherwise according to Content-Type, as Decode.
// Its errors are those of Decode and DecodeCloudEventBinary.
func (d Decoder) DecodeHTTP(h http.Header, body []byte) ([]Event, error) {
	if IsCloudEventBinary(h) {
		e, err := d.DecodeCloudEventBinary(h, body)
		if err != nil {
			return nil, err
		}
		return []Event{e}, nil
	}
	contentType := ""
	if ct := headerValues(h, "content-type"); len(ct) > 0 {
		contentType = ct[0]
	}
	return d.Decode(contentType, body)
}

// binaryAttributes are the ce-* headers an Event is made of, by the Event
// field each becomes (as Validate names it).
var binaryAttributes = []struct{ header, field string }{
	{"ce-id", "id"},
	{"ce-subject", "tenant"},
	{"ce-type", "metric"},
	{"ce-time", "time"},
	{"ce-source", "source"},
}

// DecodeCloudEventBinary decodes and validates one CloudEvent in HTTP
// binary content mode: its attributes are the ce-* headers of h (names in
// any case; values unquoted and percent-decoded as the HTTP binding
// requires) and body is its data, a JSON object with an integer "value".
//
// It returns an error wrapping ErrUnsupportedMediaType when Content-Type
// is not application/json; a *BodyError when body is not UTF-8; and
// otherwise a *ValidationError listing every field error at index 0, each
// named as sent: "ce-subject", "ce-time", "data.value", "data.region"...
// A header sent twice is rejected, like a JSON key sent twice.
func (d Decoder) DecodeCloudEventBinary(h http.Header, body []byte) (Event, error) {
	var errs fieldErrors
	if err := checkBinaryContentType(h, &errs); err != nil {
		return Event{}, err
	}
	if !utf8.Valid(body) {
		return Event{}, &BodyError{Code: CodeInvalidUTF8, Message: "the body (the CloudEvent's data) is not valid UTF-8"}
	}
	e := binaryHeaderEvent(h, &errs)
	// The data is pre-scanned like any body: a member sent twice, in any
	// case or escaped, is ambiguous; too deep or too large is refused.
	issues, err := d.scanBinaryData(body)
	if se, ok := scanSyntaxError(err); ok {
		errs.add("properties", "must be a JSON object with an integer \"value\": %s", se.Error())
	} else if err != nil {
		return Event{}, d.scanError(err, false, "data")
	} else {
		decodeCloudEventData(&e, body, &errs)
	}
	evs, err := d.validate([]Event{e}, issueErrors(issues, 0, "data.", dataKeys), errs.list, cloudEventBinaryField)
	if err != nil {
		return Event{}, err
	}
	return evs[0], nil
}

// checkBinaryContentType adds the error of a Content-Type sent more than
// once, and returns one wrapping ErrUnsupportedMediaType when it is not
// application/json (a missing or empty one is).
func checkBinaryContentType(h http.Header, errs *fieldErrors) error {
	switch ct := headerValues(h, "content-type"); {
	case len(ct) > 1:
		errs.add("Content-Type", "appears %d times; send it once", len(ct))
	case len(ct) == 1 && strings.TrimSpace(ct[0]) != "":
		mt, _, err := mime.ParseMediaType(ct[0])
		if err != nil || mt != MediaJSON {
			return fmt.Errorf("%w: %q; the data of a CloudEvent in HTTP binary content mode (a ce-specversion header) must be %s, or send the whole event as %s",
				ErrUnsupportedMediaType, ct[0], MediaJSON, MediaCloudEvent)
		}
	}
	return nil
}

// binaryHeaderEvent reads the event's attributes from the ce-* headers of
// h, adding an error for each that is missing, sent twice, badly encoded
// or of the wrong value, and for a ce-datacontenttype (which binary mode
// does not have).
func binaryHeaderEvent(h http.Header, errs *fieldErrors) Event {
	if v := binaryAttribute(h, "ce-specversion", "ce-specversion", errs); v != "1.0" && !errs.has("ce-specversion") {
		errs.add("ce-specversion", "must be \"1.0\", got %q", truncate([]byte(v)))
	}
	if len(headerValues(h, "ce-datacontenttype")) > 0 {
		errs.add("ce-datacontenttype", "must not be sent in HTTP binary content mode; Content-Type is the data content type")
	}
	vals := make(map[string]string, len(binaryAttributes))
	for _, a := range binaryAttributes {
		vals[a.field] = binaryAttribute(h, a.header, a.field, errs)
	}
	e := Event{ID: vals["id"], Tenant: vals["tenant"], Metric: vals["metric"], Source: vals["source"]}
	if e.Source == "" && !errs.has("source") {
		errs.add("source", "is required by CloudEvents 1.0")
	}
	if ts := vals["time"]; ts != "" {
		t, msg := parseTime(ts)
		if msg != "" {
			errs.add("time", "%s", msg)
		}
		e.Time = t
	}
	return e
}

// binaryAttribute returns the value of the attribute header of h,
// decoded (see headerAttribute), or "" with an error of field when it is
// sent more than once or cannot be decoded.
func binaryAttribute(h http.Header, header, field string, errs *fieldErrors) string {
	vs := headerValues(h, header)
	if len(vs) == 0 {
		return ""
	}
	if len(vs) > 1 {
		errs.add(field, "appears %d times; send each attribute once", len(vs))
		return ""
	}
	s, err := headerAttribute(vs[0])
	if err != nil {
		errs.add(field, "%s", err)
	}
	return s
}

// scanBinaryData pre-scans the data of a binary-mode CloudEvent, unless
// it is empty or white space. The key issues of data that is not an
// object are dropped: that it is not one is the error to report.
func (d Decoder) scanBinaryData(body []byte) ([]jsonscan.KeyIssue, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, nil
	}
	issues, err := jsonscan.Scan(body, d.scanOptions(false, nil))
	if trimmed[0] != '{' {
		issues = nil
	}
	return issues, err
}

// cloudEventBinaryField names an Event field as the header or data member
// of binary content mode it came from.
func cloudEventBinaryField(field string) string {
	f := cloudEventField(field)
	switch f {
	case "id", "subject", "type", "time", "source":
		return "ce-" + f
	}
	return f
}

// headerValues returns every value of header name (lower case) in h,
// whatever the case of h's keys: a server's headers are canonical, a map
// built by hand need not be.
func headerValues(h http.Header, name string) []string {
	if vs, ok := h[http.CanonicalHeaderKey(name)]; ok {
		return vs
	}
	var vs []string
	for k, v := range h {
		if strings.EqualFold(k, name) {
			vs = append(vs, v...)
		}
	}
	return vs
}

// headerAttribute decodes the value of a ce-* header into the attribute's
// string as the CloudEvents HTTP binding (3.1.3.2) requires: double-quoted
// strings are unquoted first (RFC 7230, 3.2.6), then one round of
// percent-decoding is done, and the result must be UTF-8.
func headerAttribute(v string) (string, error) {
	if strings.ContainsAny(v, `"%`) {
		var err error
		if v, err = unquoteHeader(v); err != nil {
			return "", err
		}
		if v, err = percentDecode(v); err != nil {
			return "", err
		}
	}
	if !utf8.ValidString(v) {
		return "", errors.New("is not valid UTF-8; percent-encode other characters than printable ASCII as UTF-8 bytes (%E2%82%AC for €)")
	}
	return v, nil
}

func unquoteHeader(v string) (string, error) {
	if !strings.Contains(v, `"`) {
		return v, nil
	}
	var b strings.Builder
	b.Grow(len(v))
	quoted := false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '"':
			quoted = !quoted
		case c == '\\' && quoted:
			if i++; i == len(v) {
				return "", errors.New("ends inside a backslash escape of a double-quoted string")
			}
			b.WriteByte(v[i])
		default:
			b.WriteByte(c)
		}
	}
	if quoted {
		return "", errors.New("has a double-quoted string that does not end; percent-encode a literal \" as %22")
	}
	return b.String(), nil
}

func percentDecode(v string) (string, error) {
	if !strings.Contains(v, "%") {
		return v, nil
	}
	b := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b = append(b, v[i])
			continue
		}
		if i+2 >= len(v) || unhex(v[i+1]) < 0 || unhex(v[i+2]) < 0 {
			return "", fmt.Errorf("has a %% at byte %d that is not followed by two hex digits; percent-encode a literal %% as %%25", i)
		}
		b = append(b, byte(unhex(v[i+1])<<4|unhex(v[i+2])))
		i += 2
	}
	if !utf8.Valid(b) {
		return "", errors.New("percent-decodes to bytes that are not valid UTF-8")
	}
	return string(b), nil
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
