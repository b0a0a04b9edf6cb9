package httpjson_test

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/usagemeter/metering/internal/httpjson"
)

type planBody struct {
	Plan   string `json:"plan"`
	Quotas []struct {
		Metric string `json:"metric"`
		Limit  *int64 `json:"limit"`
	} `json:"quotas"`
}

func TestDecode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, body string
		wantErr    string // substring; empty: no error
	}{
		{"valid", `{"plan":"free","quotas":[{"metric":"api_calls","limit":10}]}`, ""},
		{"escaped key alone", `{"pl\u0061n":"free"}`, ""},
		{"duplicate field", `{"plan":"free","plan":"pro"}`, `field "plan" appears twice`},
		{"duplicate in another case", `{"plan":"free","PLAN":"pro"}`, `field "PLAN" appears twice (also as "plan"`},
		{"duplicate spelled with an escape", `{"plan":"free","pl\u0061n":"pro"}`, `field "plan" appears twice`},
		{"nested duplicate", `{"quotas":[{"metric":"a","limit":1,"Limit":null}]}`, `field "quotas[0].Limit" appears twice`},
		{"too deep", `{"quotas":[[[[[[[[[]]]]]]]]]}`, "nested deeper than 8 levels"},
		{"a million [", strings.Repeat("[", 1_000_000), "nested deeper than 8 levels"},
		{"unknown field", `{"plan":"free","extra":1}`, `unknown field "extra"`},
		{"wrong type", `{"plan":1}`, `field "plan" must be string`},
		{"empty", " ", "the body is empty"},
		{"trailing data", `{"plan":"free"} {}`, "not valid JSON"},
		{"not JSON", `{plan}`, "not valid JSON"},
		{"too large", `{"plan":"` + strings.Repeat("x", 2<<20) + `"}`, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest("PUT", "/v1/admin/plans/free", strings.NewReader(tt.body))
			var v planBody
			err := httpjson.Decode(r, 2<<20, &v)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Decode: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Decode = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestReadBody: a body that cannot be read is reported without the network
// error (it names this host's address), and a compressed body is refused
// as ErrEncoding rather than read as garbage JSON.
func TestReadBody(t *testing.T) {
	t.Parallel()
	netErr := errors.New("read tcp 10.1.2.3:8080->10.9.8.7:45064: i/o timeout")
	tests := []struct {
		name     string
		encoding string
		body     io.Reader
		wantErr  error  // errors.Is, or nil
		wantText string // substring of the error, "" for none
	}{
		{"plain", "", strings.NewReader(`{}`), nil, ""},
		{"identity", "identity", strings.NewReader(`{}`), nil, ""},
		{"gzip refused", "gzip", strings.NewReader("\x1f\x8b"), httpjson.ErrEncoding, ""},
		{"zstd refused", "zstd", strings.NewReader(`{}`), httpjson.ErrEncoding, ""},
		{"read error names no address", "", iotest.ErrReader(netErr), nil, "could not be read"},
		{"over the limit", "", strings.NewReader(strings.Repeat(" ", 65)), nil, "larger than 64 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest("PUT", "/v1/admin/tenants/acme", tt.body)
			if tt.encoding != "" {
				r.Header.Set("Content-Encoding", tt.encoding)
			}
			_, err := httpjson.ReadBody(r, 64)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
			case tt.wantText != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantText) {
					t.Fatalf("got %v, want an error with %q", err, tt.wantText)
				}
				if strings.Contains(err.Error(), "10.1.2.3") || strings.Contains(err.Error(), "tcp") {
					t.Fatalf("the error names the connection: %v", err)
				}
			case err != nil:
				t.Fatalf("got %v", err)
			}
		})
	}
}
