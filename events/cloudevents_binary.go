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
	var errs []FieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	switch ct := headerValues(h, "content-type"); {
	case len(ct) > 1:
		add("Content-Type", "appears %d times; send it once", len(ct))
	case len(ct) == 1 && strings.TrimSpace(ct[0]) != "":
		mt, _, err := mime.ParseMediaType(ct[0])
		if err != nil || mt != MediaJSON {
			return Event{}, fmt.Errorf("%w: %q; the data of a CloudEvent in HTTP binary content mode (a ce-specversion header) must be %s, or send the whole event as %s",
				ErrUnsupportedMediaType, ct[0], MediaJSON, MediaCloudEvent)
		}
	}
	if !utf8.Valid(body) {
		return Event{}, &BodyError{Code: CodeInvalidUTF8, Message: "the body (the CloudEvent's data) is not valid UTF-8"}
	}
	attr := func(header, field string) string {
		vs := headerValues(h, header)
		if len(vs) == 0 {
			return ""
		}
		if len(vs) > 1 {
			add(field, "appears %d times; send each attribute once", len(vs))
			return ""
		}
		s, err := headerAttribute(vs[0])
		if err != nil {
			add(field, "%s", err)
		}
		return s
	}
	if v := attr("ce-specversion", "ce-specversion"); v != "1.0" && !hasField(errs, "ce-specversion") {
		add("ce-specversion", "must be \"1.0\", got %q", truncate([]byte(v)))
	}
	if len(headerValues(h, "ce-datacontenttype")) > 0 {
		add("ce-datacontenttype", "must not be sent in HTTP binary content mode; Content-Type is the data content type")
	}
	var e Event
	vals := make(map[string]string, len(binaryAttributes))
	for _, a := range binaryAttributes {
		vals[a.field] = attr(a.header, a.field)
	}
	e.ID, e.Tenant, e.Metric, e.Source = vals["id"], vals["tenant"], vals["metric"], vals["source"]
	if e.Source == "" && !hasField(errs, "source") {
		add("source", "is required by CloudEvents 1.0")
	}
	if ts := vals["time"]; ts != "" {
		t, msg := parseTime(ts)
		if msg != "" {
			add("time", "%s", msg)
		}
		e.Time = t
	}
	// The data is pre-scanned like any body: a member sent twice, in any
	// case or escaped, is ambiguous; too deep or too large is refused.
	var issues []jsonscan.KeyIssue
	var err error
	if trimmed := bytes.TrimSpace(body); len(trimmed) > 0 {
		issues, err = jsonscan.Scan(body, d.scanOptions(false, nil))
		if trimmed[0] != '{' {
			issues = nil // not an object: that is the error to report
		}
	}
	var se *jsonscan.Error
	switch {
	case errors.As(err, &se) && se.Code == jsonscan.CodeSyntax:
		add("properties", "must be a JSON object with an integer \"value\": %s", se.Error())
	case err != nil:
		return Event{}, d.scanError(err, false, "data")
	default:
		decodeCloudEventData(&e, body, add)
	}
	evs, err := d.validate([]Event{e}, issueErrors(issues, 0, "data.", dataKeys), errs, cloudEventBinaryField)
	if err != nil {
		return Event{}, err
	}
	return evs[0], nil
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

func hasField(errs []FieldError, field string) bool {
	for _, fe := range errs {
		if fe.Field == field {
			return true
		}
	}
	return false
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
