// Package jsonscan checks a JSON document in one linear pass, before
// anything recursive reads it: its syntax (RFC 8259, as encoding/json
// accepts it), its size, nesting depth, string, object and array sizes,
// and that no object has the same key twice, keys compared after
// unescaping and in any case (the way encoding/json matches struct
// fields, so two spellings that could land in one field are refused).
//
// A document that passes Scan is one valid JSON value no deeper than
// Limits.MaxDepth, so encoding/json, whose decoder recurses once per
// level, can then read it with bounded stack and memory.
//
// Invariant: Scan never recurses; its stack is an explicit slice bounded
// by Limits.MaxDepth, and it allocates nothing when the document has no
// problem, whatever its content (TestScanAllocatesNothing,
// TestScanFiveMillionBrackets).
package jsonscan

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Defaults of Limits, tight enough for usage events: an event is an
// object of scalars with one flat object of properties.
const (
	// DefaultMaxBytes is the largest document, 5 MiB.
	DefaultMaxBytes = 5 << 20
	// DefaultMaxDepth is the deepest nesting of objects and arrays; the
	// top-level object or array is depth 1. An event in a batch array is
	// at depth 2 and its properties at depth 3.
	DefaultMaxDepth = 8
	// DefaultMaxStringBytes is the longest string or number literal, in
	// bytes as written (escapes count as their source bytes).
	DefaultMaxStringBytes = 8192
	// DefaultMaxKeys is the most keys one object may have.
	DefaultMaxKeys = 64
	// DefaultMaxElements is the most elements one array may have.
	DefaultMaxElements = 1000
)

// Limits bound a document. A zero field takes its default.
type Limits struct {
	MaxBytes       int
	MaxDepth       int
	MaxStringBytes int
	MaxKeys        int
	MaxElements    int
}

// WithDefaults returns l with every zero (or negative) field set to its default.
func (l Limits) WithDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxBytes, DefaultMaxBytes)
	def(&l.MaxDepth, DefaultMaxDepth)
	def(&l.MaxStringBytes, DefaultMaxStringBytes)
	def(&l.MaxKeys, DefaultMaxKeys)
	def(&l.MaxElements, DefaultMaxElements)
	return l
}

// Codes of an *Error: the document cannot be read at all.
const (
	CodeSyntax          = "malformed"
	CodeTooLarge        = "too_large"
	CodeTooDeep         = "too_deep"
	CodeTooLong         = "too_long"
	CodeTooManyKeys     = "too_many_keys"
	CodeTooManyElements = "too_many_elements"
)

// Codes of a KeyIssue: the document is readable, but a key is ambiguous or
// not allowed.
const (
	IssueDuplicate = "duplicate_key"
	IssueUnknown   = "unknown_key"
)

// Error is the first reason a document cannot be read; Scan stops there.
type Error struct {
	// Code is one of the Code constants.
	Code string
	// Offset is the byte offset where the problem was found.
	Offset int
	// Index is the batch item the problem is in (see Options.Batch), or 0.
	Index int
	// Path locates the problem inside the item (or the document):
	// object keys joined by dots, array indexes in brackets, such as
	// "properties.a[2]"; empty at the top level.
	Path string
	// Message says what is wrong, in words, without Path or Offset.
	Message string
}

func (e *Error) Error() string {
	where := fmt.Sprintf("at byte %d", e.Offset)
	if e.Path != "" {
		where = fmt.Sprintf("in %s, at byte %d", e.Path, e.Offset)
	}
	return e.Message + " (" + where + ")"
}

// KeyIssue is a key that makes its object ambiguous (a duplicate) or that
// Options.ItemKey refused. Scan reports every one and keeps going.
type KeyIssue struct {
	// Code is IssueDuplicate or IssueUnknown.
	Code string
	// Index is the batch item the key is in (see Options.Batch), or 0.
	Index int
	// Path is the key's path inside the item, ending with the key itself
	// as unescaped (the later spelling, for a duplicate): "properties.region".
	Path string
	// Key is the key, unescaped.
	Key string
	// Other is, for a duplicate, the earlier spelling of the key, unescaped.
	Other string
}

// Options configure Scan. The zero value applies the default limits.
type Options struct {
	Limits Limits
	// Batch makes a top-level array a batch of items: every element is an
	// item, errors and issues carry its position as Index, and their paths
	// start inside it. Otherwise the whole document is item 0.
	Batch bool
	// ItemKey, when not nil, judges every key of an item's own object
	// (not of objects nested in it), unescaped; a key it refuses is
	// reported as an IssueUnknown.
	ItemKey func(key []byte) bool
	// MaxIssues bounds the issues reported (the first ones); default 100.
	MaxIssues int
}

// Scan checks b. It returns the first reason b cannot be read as an
// *Error, or else the key issues of b (nil when there are none).
func Scan(b []byte, opt Options) ([]KeyIssue, error) {
	s := pool.Get().(*scanner)
	defer s.release()
	s.reset(b, opt)
	err := s.run()
	if err != nil {
		return nil, err
	}
	if len(s.issues) == 0 {
		return nil, nil
	}
	return append([]KeyIssue(nil), s.issues...), nil
}

var pool = sync.Pool{New: func() any { return new(scanner) }}

// frame is one open object or array.
type frame struct {
	object bool
	n      int // keys or elements read so far
	keys   int // object: index in scanner.keys of its first key
	buf    int // object: length of scanner.buf when it opened
}

// key is one key of an open object: its unescaped bytes are src[start:end]
// where src is the document, or scanner.buf when escaped.
type key struct {
	hash       uint64
	start, end int
	escaped    bool
}

type scanner struct {
	b      []byte
	i      int
	lim    Limits
	opt    Options
	stack  []frame
	keys   []key
	buf    []byte
	issues []KeyIssue
}

func (s *scanner) reset(b []byte, opt Options) {
	s.b, s.i, s.opt, s.lim = b, 0, opt, opt.Limits.WithDefaults()
	if s.opt.MaxIssues <= 0 {
		s.opt.MaxIssues = 100
	}
	s.stack, s.keys, s.buf, s.issues = s.stack[:0], s.keys[:0], s.buf[:0], s.issues[:0]
}

// release returns s to the pool, keeping neither the document nor a
// large buffer of unescaped keys alive.
func (s *scanner) release() {
	s.b, s.opt = nil, Options{}
	if cap(s.buf) > 64<<10 {
		s.buf = nil
	}
	pool.Put(s)
}

func (s *scanner) fail(code, format string, args ...any) error {
	e := &Error{Code: code, Offset: s.i, Message: fmt.Sprintf(format, args...)}
	e.Index, e.Path = s.where(len(s.stack))
	return e
}

func (s *scanner) syntax(what string) error {
	if s.i >= len(s.b) {
		return s.fail(CodeSyntax, "the JSON ends too early; %s", what)
	}
	r, _ := utf8.DecodeRune(s.b[s.i:])
	return s.fail(CodeSyntax, "unexpected %s; %s", quoteRune(r), what)
}

func quoteRune(r rune) string {
	if r == utf8.RuneError {
		return "byte"
	}
	return strconv.QuoteRune(r)
}

// batched reports whether the bottom frame is a batch array of items.
func (s *scanner) batched() bool {
	return s.opt.Batch && len(s.stack) > 0 && !s.stack[0].object
}

// where returns the item index and the path inside it to the current
// position in the first depth frames.
func (s *scanner) where(depth int) (int, string) {
	index, from := 0, 0
	if s.batched() {
		index, from = max(s.stack[0].n-1, 0), 1
	}
	var p strings.Builder
	for d := from; d < depth; d++ {
		f := s.stack[d]
		if !f.object {
			if f.n > 0 {
				fmt.Fprintf(&p, "[%d]", f.n-1)
			}
			continue
		}
		k := f.keys + f.n - 1
		if f.n == 0 || k >= len(s.keys) { // no key yet, or it is being read
			continue
		}
		if p.Len() > 0 {
			p.WriteByte('.')
		}
		p.Write(s.keyBytes(s.keys[k]))
	}
	return index, p.String()
}

func (s *scanner) keyBytes(k key) []byte {
	if k.escaped {
		return s.buf[k.start:k.end]
	}
	return s.b[k.start:k.end]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func (s *scanner) skipSpace() {
	for s.i < len(s.b) && isSpace(s.b[s.i]) {
		s.i++
	}
}

// run scans the document: a loop over values, with the open objects and
// arrays on s.stack instead of the call stack.
func (s *scanner) run() error {
	if len(s.b) > s.lim.MaxBytes {
		return s.fail(CodeTooLarge, "the document is %d bytes; at most %d are allowed", len(s.b), s.lim.MaxBytes)
	}
	s.skipSpace()
	for {
		ended, err := s.value()
		if err != nil {
			return err
		}
		if !ended {
			continue // an object or array opened: its first value is next
		}
		done, err := s.next()
		if done || err != nil {
			return err
		}
	}
}

// value reads the value that starts at s.i. A scalar, or an empty object
// or array, is read whole (ended). An object or array with members is
// pushed on s.stack and read up to its first value: its first key and
// colon, or nothing more for an array (not ended).
func (s *scanner) value() (ended bool, err error) {
	if s.i >= len(s.b) {
		return false, s.syntax("expected a JSON value")
	}
	switch c := s.b[s.i]; {
	case c == '{' || c == '[':
		return s.open(c)
	case c == '"':
		_, err = s.str(false)
	case c == '-' || c >= '0' && c <= '9':
		err = s.number()
	case c == 't':
		err = s.literal("true")
	case c == 'f':
		err = s.literal("false")
	case c == 'n':
		err = s.literal("null")
	default:
		err = s.syntax("expected a JSON value")
	}
	return true, err
}

// open reads the { or [ at s.i (c) and pushes its frame; an empty object
// or array is popped at once (ended), otherwise its first key or element
// is read (not ended).
func (s *scanner) open(c byte) (ended bool, err error) {
	if len(s.stack) >= s.lim.MaxDepth {
		return false, s.fail(CodeTooDeep, "objects and arrays are nested deeper than %d levels", s.lim.MaxDepth)
	}
	s.stack = append(s.stack, frame{object: c == '{', keys: len(s.keys), buf: len(s.buf)})
	s.i++
	s.skipSpace()
	if s.i < len(s.b) && (s.b[s.i] == '}' && c == '{' || s.b[s.i] == ']' && c == '[') {
		s.i++
		s.pop()
		return true, nil
	}
	if c == '{' {
		return false, s.key()
	}
	return false, s.element()
}

// next follows the end of a value: it closes the objects and arrays that
// end there and reads the comma, and the key of an object member, before
// the next value; done reports that the top-level value has ended (with
// err nil when only white space follows it).
func (s *scanner) next() (done bool, err error) {
	for {
		s.skipSpace()
		if len(s.stack) == 0 {
			if s.i < len(s.b) {
				return true, s.syntax("expected the end of the JSON value")
			}
			return true, nil
		}
		if s.i >= len(s.b) {
			return true, s.syntax("expected , or the end of an object or array")
		}
		f := &s.stack[len(s.stack)-1]
		c := s.b[s.i]
		if c == ',' {
			s.i++
			s.skipSpace()
			if f.object {
				return false, s.key()
			}
			return false, s.element()
		}
		if f.object && c == '}' || !f.object && c == ']' {
			s.i++
			s.pop()
			continue
		}
		if f.object {
			return true, s.syntax("expected , or } after an object member")
		}
		return true, s.syntax("expected , or ] after an array element")
	}
}

func (s *scanner) pop() {
	f := s.stack[len(s.stack)-1]
	if f.object {
		s.keys, s.buf = s.keys[:f.keys], s.buf[:f.buf]
	}
	s.stack = s.stack[:len(s.stack)-1]
}

// element counts a new element of the innermost array.
func (s *scanner) element() error {
	f := &s.stack[len(s.stack)-1]
	f.n++
	if f.n > s.lim.MaxElements {
		return s.fail(CodeTooManyElements, "an array has more than %d elements", s.lim.MaxElements)
	}
	return nil
}

// key reads an object key and its colon, checks it against the object's
// other keys and Options.ItemKey, and leaves s.i at the member's value.
func (s *scanner) key() error {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return s.syntax("expected a string key or the end of the object")
	}
	depth := len(s.stack)
	f := &s.stack[depth-1]
	f.n++
	if f.n > s.lim.MaxKeys {
		return s.fail(CodeTooManyKeys, "an object has more than %d keys", s.lim.MaxKeys)
	}
	k, err := s.str(true)
	if err != nil {
		return err
	}
	name := s.keyBytes(k)
	k.hash = foldHash(name)
	dup := -1
	for j := f.keys; j < len(s.keys); j++ {
		if s.keys[j].hash == k.hash && bytes.EqualFold(s.keyBytes(s.keys[j]), name) {
			dup = j
			break
		}
	}
	s.keys = append(s.keys, k)
	switch {
	case dup >= 0:
		s.issue(IssueDuplicate, depth, name, s.keyBytes(s.keys[dup]))
	case s.opt.ItemKey != nil && s.itemDepth() == depth && !s.opt.ItemKey(name):
		s.issue(IssueUnknown, depth, name, nil)
	}
	s.skipSpace()
	if s.i >= len(s.b) || s.b[s.i] != ':' {
		return s.syntax("expected : after an object key")
	}
	s.i++
	s.skipSpace()
	return nil
}

// itemDepth is the depth of an item's own object.
func (s *scanner) itemDepth() int {
	if s.batched() {
		return 2
	}
	return 1
}

func (s *scanner) issue(code string, depth int, name, other []byte) {
	if len(s.issues) >= s.opt.MaxIssues {
		return
	}
	index, path := s.where(depth)
	is := KeyIssue{Code: code, Index: index, Path: path, Key: string(name)}
	if other != nil {
		is.Other = string(other)
	}
	s.issues = append(s.issues, is)
}

// str reads the string at s.i. For a key (unescape true) it returns where
// its unescaped bytes are, copying them to s.buf when it has escapes.
func (s *scanner) str(unescape bool) (key, error) {
	start := s.i + 1
	escaped := false
	s.i++
	for {
		// The fast path: bytes that stand for themselves.
		for s.i < len(s.b) && plain[s.b[s.i]] {
			s.i++
		}
		if s.i >= len(s.b) {
			return key{}, s.syntax("a string does not end")
		}
		c := s.b[s.i]
		if c == '"' {
			break
		}
		if c < 0x20 {
			return key{}, s.fail(CodeSyntax, "a string contains the control character %U; escape it", rune(c))
		}
		// A backslash escape.
		escaped = true
		if s.i+1 >= len(s.b) {
			s.i++
			return key{}, s.syntax("a string does not end")
		}
		switch s.b[s.i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			s.i += 2
		case 'u':
			if s.i+6 > len(s.b) || !isHex4(s.b[s.i+2:s.i+6]) {
				s.i++
				return key{}, s.fail(CodeSyntax, "a \\u escape needs four hex digits")
			}
			s.i += 6
		default:
			s.i++
			return key{}, s.syntax("invalid escape in a string")
		}
	}
	end := s.i
	s.i++
	if end-start > s.lim.MaxStringBytes {
		s.i = start - 1
		return key{}, s.fail(CodeTooLong, "a string is %d bytes long; at most %d are allowed", end-start, s.lim.MaxStringBytes)
	}
	if !unescape || !escaped {
		return key{start: start, end: end}, nil
	}
	from := len(s.buf)
	s.buf = appendUnescaped(s.buf, s.b[start:end])
	return key{start: from, end: len(s.buf), escaped: true}, nil
}

// plain marks the bytes that stand for themselves in a JSON string: not
// a quote, a backslash or a control character.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex4(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		default:
			c = c - 'A' + 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// appendUnescaped appends the string body raw (escapes already checked)
// unescaped as encoding/json does: a lone surrogate becomes U+FFFD.
func appendUnescaped(dst, raw []byte) []byte {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		switch e := raw[i+1]; e {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(raw[i+2 : i+6])
			i += 6
			if utf16IsSurrogate(r) {
				if r < 0xdc00 && i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
					if lo := hex4(raw[i+2 : i+6]); lo >= 0xdc00 && lo < 0xe000 {
						r = (r-0xd800)<<10 | (lo - 0xdc00) + 0x10000
						i += 6
						dst = utf8.AppendRune(dst, r)
						continue
					}
				}
				r = utf8.RuneError
			}
			dst = utf8.AppendRune(dst, r)
			continue
		default: // " \ /
			dst = append(dst, e)
		}
		i += 2
	}
	return dst
}

func utf16IsSurrogate(r rune) bool { return r >= 0xd800 && r < 0xe000 }

// number reads a number literal: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	start := s.i
	b := s.b
	digits := func() int {
		n := 0
		for s.i < len(b) && b[s.i] >= '0' && b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	if b[s.i] == '-' {
		s.i++
	}
	if s.i < len(b) && b[s.i] == '0' {
		s.i++
	} else if digits() == 0 {
		return s.syntax("expected a digit in a number")
	}
	if s.i < len(b) && b[s.i] == '.' {
		s.i++
		if digits() == 0 {
			return s.syntax("expected a digit after the decimal point")
		}
	}
	if s.i < len(b) && (b[s.i] == 'e' || b[s.i] == 'E') {
		s.i++
		if s.i < len(b) && (b[s.i] == '+' || b[s.i] == '-') {
			s.i++
		}
		if digits() == 0 {
			return s.syntax("expected a digit in an exponent")
		}
	}
	if s.i-start > s.lim.MaxStringBytes {
		n := s.i - start
		s.i = start
		return s.fail(CodeTooLong, "a number is %d bytes long; at most %d are allowed", n, s.lim.MaxStringBytes)
	}
	return nil
}

func (s *scanner) literal(word string) error {
	if string(s.b[s.i:min(len(s.b), s.i+len(word))]) != word {
		// Point at the first byte that differs.
		for j := 0; s.i < len(s.b) && j < len(word) && s.b[s.i] == word[j]; j++ {
			s.i++
		}
		return s.syntax("expected " + word)
	}
	s.i += len(word)
	return nil
}

// foldHash hashes a key so that keys equal under bytes.EqualFold (Unicode
// simple case folding, as encoding/json matches field names) hash the
// same: each rune is replaced by the smallest rune of its folding orbit
// (ASCII letters by their upper case), then FNV-1a.
func foldHash(k []byte) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(k); {
		var r rune
		if c := k[i]; c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			r = rune(c)
			i++
		} else {
			var n int
			r, n = utf8.DecodeRune(k[i:])
			i += n
			r = foldMin(r)
		}
		h ^= uint64(r)
		h *= prime
	}
	return h
}

// foldMin returns the smallest rune that r folds to.
func foldMin(r rune) rune {
	m := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		m = min(m, f)
	}
	return m
}
