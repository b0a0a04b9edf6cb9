// Package csvsafe writes the CSV files the product exports so that a
// spreadsheet opening them never runs a cell as a formula.
//
// Rule (OWASP, "CSV Injection"): a cell whose first character is '=', '+',
// '-', '@', a tab or a carriage return is written with a leading single
// quote, which spreadsheets read as "this is text". Two kinds of cells are
// written as they are, because they cannot carry a formula and readers
// need them verbatim: a plain decimal number (an optional '-', digits, an
// optional fraction: drift is often negative) and the lone "-" that marks
// "no value". Every cell is also wrapped in double quotes (inner quotes
// doubled), so a reader that splits on ';' or a tab cannot cut a cell in
// two and expose a formula in the second half.
//
// Invariant: for every cell c, the written field read back by
// encoding/csv is Cell(c) (up to the "\r\n" to "\n" that every CSV reader
// applies inside a cell), and Cell(c) is c itself (a number, "-", or text
// not starting with a trigger) or "'" + c; so no field read back starts
// with a trigger unless it is a plain number or "-". Tested by TestCell,
// TestWriterRoundTrip and FuzzWriter.
package csvsafe

import (
	"bufio"
	"io"
	"strings"
)

// Cell returns c as it must appear in an exported CSV: c itself, or c
// prefixed with a single quote when a spreadsheet would read it as a
// formula.
func Cell(c string) string {
	if c == "" || c == "-" || isNumber(c) {
		return c
	}
	switch c[0] {
	case '=', '+', '-', '@', '\t', '\r':
		return "'" + c
	}
	return c
}

// isNumber reports whether s is -?[0-9]+(\.[0-9]+)?.
func isNumber(s string) bool {
	s = strings.TrimPrefix(s, "-")
	intPart, frac, hasFrac := strings.Cut(s, ".")
	return digits(intPart) && (!hasFrac || digits(frac))
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Writer writes records of neutralised, quoted cells, one line each,
// lines ending in "\n" (RFC 4180 readers, encoding/csv included, accept it).
type Writer struct {
	w   *bufio.Writer
	err error
}

// NewWriter returns a Writer writing to w. Call Flush when done.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: bufio.NewWriter(w)}
}

// Write writes one record. After the first error every call returns it.
func (w *Writer) Write(record []string) error {
	if w.err != nil {
		return w.err
	}
	for i, c := range record {
		if i > 0 {
			w.put(",")
		}
		w.put(`"`)
		w.put(strings.ReplaceAll(Cell(c), `"`, `""`))
		w.put(`"`)
	}
	w.put("\n")
	return w.err
}

func (w *Writer) put(s string) {
	if w.err == nil {
		_, w.err = w.w.WriteString(s)
	}
}

// Flush writes any buffered data and returns the first error seen.
func (w *Writer) Flush() error {
	if w.err == nil {
		w.err = w.w.Flush()
	}
	return w.err
}
