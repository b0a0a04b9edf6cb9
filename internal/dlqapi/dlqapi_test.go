package dlqapi_test

import (
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/dlqapi"
)

func TestCheckNote(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, note string
		ok         bool
	}{
		{"a reason", "tenant fixed (OPS-1)", true},
		{"empty", "", false},
		{"blank", " \t\n\u00a0", false},
		{"NUL", "a\x00b", false},
		{"longest", strings.Repeat("é", dlqapi.MaxNote), true},
		{"too long", strings.Repeat("é", dlqapi.MaxNote+1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := dlqapi.CheckNote(tt.note); (err == nil) != tt.ok {
				t.Fatalf("CheckNote(%q) = %v, want ok %v", tt.note, err, tt.ok)
			}
		})
	}
	if got := dlqapi.Actor("k1"); got != "key:k1" {
		t.Fatalf("Actor = %q", got)
	}
}
