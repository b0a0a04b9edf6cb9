// Package httpjson writes the API's JSON responses and errors and reads
// JSON request bodies strictly.
//
// Invariant: every error response has the shape
// {"error":{"code":"...","message":"..."}}, with a message a person can act on.
package httpjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/usagemeter/metering/events/jsonscan"
)

// Write sends v as JSON with status.
func Write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// ErrorBody is the error shape of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is a machine-readable code and a human-readable message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error sends {"error":{"code","message"}} with status.
func Error(w http.ResponseWriter, status int, code, message string) {
	Write(w, status, ErrorBody{Error: ErrorDetail{Code: code, Message: message}})
}

// Errorf is Error with a formatted message.
func Errorf(w http.ResponseWriter, status int, code, format string, args ...any) {
	Error(w, status, code, fmt.Sprintf(format, args...))
}

// ErrEncoding means a JSON body arrived with a Content-Encoding other than
// identity: these bodies are small and are read as sent (answer 415).
var ErrEncoding = errors.New("this route reads its body as sent: send it without Content-Encoding (or with identity)")

// ReadBody reads r's body, at most limit bytes. A read that fails (the
// client cut the connection or was too slow) is reported without the
// network error, which names addresses of this host.
func ReadBody(r *http.Request, limit int64) ([]byte, error) {
	if ce := strings.TrimSpace(r.Header.Get("Content-Encoding")); ce != "" && !strings.EqualFold(ce, "identity") {
		return nil, ErrEncoding
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, errors.New("the body could not be read to its end (the connection was cut, or it was too slow); send it again")
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("the body is larger than %d bytes", limit)
	}
	return body, nil
}

// Decode reads a JSON body of at most limit bytes into v, rejecting
// unknown fields and trailing data. Before encoding/json reads it, the
// body is checked in one pass without recursion (jsonscan, default limits:
// depth 8, strings of 8 KiB, 64 keys per object, 1000 array elements), and
// a field sent twice in one object, compared after unescaping and in any
// case, is refused by name: encoding/json would keep the last one.
// The error says what to fix.
func Decode(r *http.Request, limit int64, v any) error {
	body, err := ReadBody(r, limit)
	if err != nil {
		return err
	}
	return DecodeBytes(body, limit, v)
}

// DecodeBytes is Decode for a body already read with ReadBody.
func DecodeBytes(body []byte, limit int64, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return errors.New("the body is empty; send a JSON object")
	}
	issues, err := jsonscan.Scan(body, jsonscan.Options{Limits: jsonscan.Limits{MaxBytes: int(limit)}})
	if err != nil {
		var se *jsonscan.Error
		if errors.As(err, &se) && se.Code == jsonscan.CodeSyntax {
			return fmt.Errorf("the body is not valid JSON: %w", err)
		}
		return fmt.Errorf("the body is refused: %w", err)
	}
	if len(issues) > 0 {
		dups := make([]string, len(issues))
		for i, is := range issues {
			dups[i] = fmt.Sprintf("field %q appears twice", is.Path)
			if is.Other != is.Key {
				dups[i] += fmt.Sprintf(" (also as %q: fields are compared after unescaping and in any case)", is.Other)
			}
		}
		return errors.New(strings.Join(dups, "; ") + "; send each field once")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("field %q must be %s, got %s", te.Field, te.Type, te.Value)
		}
		return fmt.Errorf("the body is not valid JSON: %w", err)
	}
	return nil
}
