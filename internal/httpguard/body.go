package httpguard

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
)

// Encodings lists the Content-Encoding values a Body reader decodes.
const Encodings = "gzip, zstd or identity"

// BodyError is a body the reader refused: the HTTP status, a stable error
// code and a message for the client (it never carries internal detail).
type BodyError struct {
	Status        int
	Code, Message string
}

func (e *BodyError) Error() string { return e.Message }

// Body error codes.
const (
	CodeTooLarge            = "payload_too_large"
	CodeUnsupportedEncoding = "unsupported_encoding"
	CodeMalformedEncoding   = "malformed_encoding"
	CodeMalformedBody       = "malformed_body"
	CodeOverloaded          = "overloaded"
)

// BodyLimits bounds the request bodies of a Body reader.
type BodyLimits struct {
	// MaxBytes is the largest body, both as sent and once decoded.
	MaxBytes int64
	// LargeBytes is the size above which a body (decoded) needs one of
	// MaxLarge slots for as long as the request holds it.
	LargeBytes int64
	MaxLarge   int
	// Wait is how long a large body waits for a slot before 503.
	Wait time.Duration
}

// Body reads request bodies within BodyLimits, decoding gzip and zstd.
//
// Memory: a body never grows past MaxBytes, decoded or not; at most
// MaxLarge bodies above LargeBytes are held at once, so the bodies in
// memory total at most MaxLarge × MaxBytes plus LargeBytes per other
// request. A body is read into a pooled buffer, which the caller holds
// until it releases the body; a buffer is only handed over when its
// capacity, not only the body, is within that budget (see Read).
type Body struct {
	limits   BodyLimits
	large    *semaphore.Weighted
	inFlight prometheus.Gauge
	rejected prometheus.Counter
	buffers  sync.Pool
	gzips    sync.Pool
	zstds    sync.Pool
}

// NewBody returns a body reader; its metrics, prefixed with namespace,
// are registered on reg when reg is not nil.
func NewBody(limits BodyLimits, reg prometheus.Registerer, namespace string) *Body {
	if limits.MaxLarge < 1 {
		limits.MaxLarge = 1
	}
	b := &Body{
		limits: limits,
		large:  semaphore.NewWeighted(int64(limits.MaxLarge)),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: namespace + "_large_bodies_in_flight",
			Help: fmt.Sprintf("Request bodies above %d bytes held in memory now (at most %d).", limits.LargeBytes, limits.MaxLarge),
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: namespace + "_large_bodies_rejected_total",
			Help: "Requests answered 503 because every slot for a large body was taken.",
		}),
	}
	b.buffers.New = func() any { return new(bytes.Buffer) }
	if reg != nil {
		reg.MustRegister(b.inFlight, b.rejected)
	}
	return b
}

// Read returns r's body, decoded as its Content-Encoding says, or a
// *BodyError. release must be called once the body and everything made
// from it are no longer needed; it is never nil, and calls after the
// first do nothing.
//
// The body is owned by the caller until release: it may be the pooled
// buffer it was read into, which release returns to the pool, so it must
// not be read, written or retained after release (copy what must
// outlive the request). Its capacity is its length, so appending to it
// copies it rather than writing into the pooled buffer.
func (b *Body) Read(w http.ResponseWriter, r *http.Request) (body []byte, release func(), err error) {
	coding, err := contentCoding(r.Header)
	if err != nil {
		return nil, func() {}, err
	}
	limit := b.limits.MaxBytes
	if r.ContentLength > limit {
		return nil, func() {}, tooLarge(limit, false)
	}
	l := &lease{body: b, ctx: r.Context()}
	// A body announced as large takes its slot before a byte is read.
	if coding == "" && r.ContentLength > b.limits.LargeBytes {
		if err := l.hold(); err != nil {
			return nil, func() {}, err
		}
	}
	wire := &wireReader{r: http.MaxBytesReader(w, r.Body, limit)}
	src, closeDecoder, err := b.decoder(coding, wire)
	if err != nil {
		l.release()
		return nil, func() {}, readError(coding, limit, err, wire.err)
	}
	defer closeDecoder()
	buf := b.buffers.Get().(*bytes.Buffer)
	buf.Reset()
	if err := b.fill(buf, src, l); err != nil {
		b.buffers.Put(buf)
		l.release()
		if be, ok := err.(*BodyError); ok {
			return nil, func() {}, be
		}
		return nil, func() {}, readError(coding, limit, err, wire.err)
	}
	return l.keep(buf), l.release, nil
}

// decoder returns the reader of the body decoded from wire, and what
// returns its decoder to the pool once the body is read.
func (b *Body) decoder(coding string, wire io.Reader) (io.Reader, func(), error) {
	switch coding {
	case "gzip":
		zr, err := b.gzipReader(wire)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() { b.gzips.Put(zr) }, nil
	case "zstd":
		zr, err := b.zstdReader(wire)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() {
			_ = zr.Reset(nil)
			b.zstds.Put(zr)
		}, nil
	}
	return wire, func() {}, nil
}

// fill reads src into buf, up to MaxBytes. The first LargeBytes need no
// slot; a body that goes on takes one (through l) before it grows
// further. A body over the limit is errDecodedTooLarge (or the wire's
// *http.MaxBytesError); no free slot is a 503 *BodyError.
func (b *Body) fill(buf *bytes.Buffer, src io.Reader, l *lease) error {
	limit := b.limits.MaxBytes
	first := min(b.limits.LargeBytes, limit)
	_, err := io.CopyN(buf, src, first+1)
	if err == nil && first < limit {
		if err := l.hold(); err != nil {
			return err
		}
		_, err = io.Copy(buf, io.LimitReader(src, limit-int64(buf.Len())+1))
	}
	if err == nil && int64(buf.Len()) > limit {
		err = errDecodedTooLarge
	}
	if err == io.EOF {
		return nil
	}
	return err
}

// lease is what one Read holds for its caller until release: a slot for
// a large body, and the pooled buffer the body is in.
type lease struct {
	body *Body
	ctx  context.Context
	slot bool
	buf  *bytes.Buffer
}

// hold takes a slot for a large body, waiting at most BodyLimits.Wait;
// it returns a 503 *BodyError when none frees up. Holding one already is
// enough.
func (l *lease) hold() error {
	if l.slot {
		return nil
	}
	ctx, cancel := context.WithTimeout(l.ctx, l.body.limits.Wait)
	defer cancel()
	if err := l.body.large.Acquire(ctx, 1); err != nil {
		l.body.rejected.Inc()
		return &BodyError{Status: http.StatusServiceUnavailable, Code: CodeOverloaded,
			Message: "too many large requests are being processed; retry after 1 second, or send smaller batches"}
	}
	l.slot = true
	l.body.inFlight.Inc()
	return nil
}

// keep returns the body read into buf. The buffer itself is handed to
// the caller, until release, when its capacity is within the memory the
// body may hold (MaxBytes with a slot, LargeBytes without): no copy.
// Otherwise (a buffer grown by an earlier, larger body) the body is
// copied out and the buffer goes back to the pool at once.
func (l *lease) keep(buf *bytes.Buffer) []byte {
	budget := l.body.limits.LargeBytes
	if l.slot {
		budget = l.body.limits.MaxBytes
	}
	if int64(buf.Cap()) > budget {
		body := make([]byte, buf.Len())
		copy(body, buf.Bytes())
		l.body.buffers.Put(buf)
		return body
	}
	l.buf = buf
	n := buf.Len()
	return buf.Bytes()[:n:n]
}

// release frees the slot and returns the buffer to the pool; the body
// must not be used after it. Only the first call does anything.
func (l *lease) release() {
	if l.slot {
		l.slot = false
		l.body.inFlight.Dec()
		l.body.large.Release(1)
	}
	if l.buf != nil {
		l.body.buffers.Put(l.buf)
		l.buf = nil
	}
}

// contentCoding returns "", "gzip" or "zstd" for r's Content-Encoding, or
// a 415 *BodyError.
func contentCoding(h http.Header) (string, error) {
	values := h.Values("Content-Encoding")
	if len(values) == 0 {
		return "", nil
	}
	var codings []string
	for _, v := range values {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.ToLower(strings.TrimSpace(c)); c != "" && c != "identity" {
				codings = append(codings, c)
			}
		}
	}
	switch {
	case len(codings) == 0:
		return "", nil
	case len(codings) == 1 && (codings[0] == "gzip" || codings[0] == "x-gzip"):
		return "gzip", nil
	case len(codings) == 1 && codings[0] == "zstd":
		return "zstd", nil
	}
	return "", &BodyError{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedEncoding,
		Message: fmt.Sprintf("Content-Encoding %q is not supported; send the body as %s (one coding)", strings.Join(values, ", "), Encodings)}
}

func (b *Body) gzipReader(src io.Reader) (*gzip.Reader, error) {
	if zr, ok := b.gzips.Get().(*gzip.Reader); ok {
		return zr, zr.Reset(src)
	}
	return gzip.NewReader(src)
}

func (b *Body) zstdReader(src io.Reader) (*zstd.Decoder, error) {
	if zr, ok := b.zstds.Get().(*zstd.Decoder); ok {
		return zr, zr.Reset(src)
	}
	// A decoder without goroutines whose window, the memory it holds, is
	// the body limit rounded up to a power of two (8 MiB for the default
	// 5 MiB, the window common encoders declare when they stream). The
	// decoded size is bounded by the caller.
	return zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(b.zstdWindow()))
}

// zstdWindow is the largest zstd window a body may declare.
func (b *Body) zstdWindow() uint64 {
	window := uint64(1) << 10
	for window < uint64(b.limits.MaxBytes) {
		window <<= 1
	}
	return window
}

func tooLarge(limit int64, decoded bool) *BodyError {
	what := "the body is"
	if decoded {
		what = "the decompressed body is"
	}
	return &BodyError{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
		Message: fmt.Sprintf("%s larger than %d bytes; split it into smaller batches", what, limit)}
}

func corrupt(coding string, err error) *BodyError {
	return &BodyError{Status: http.StatusBadRequest, Code: CodeMalformedEncoding,
		Message: fmt.Sprintf("the body is labelled Content-Encoding: %s but is not valid %s data (%s); compress it as labelled, or drop the header", coding, coding, decoderMessage(err))}
}

// errDecodedTooLarge is a body that decodes to more than the limit.
var errDecodedTooLarge = errors.New("decoded body over the limit")

// readError classifies err, a failed read of a body (decoded when coding
// is not empty); wireErr is the error of the connection's reader, if any.
func readError(coding string, limit int64, err, wireErr error) error {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return tooLarge(limit, false)
	case errors.Is(err, errDecodedTooLarge):
		return tooLarge(limit, true)
	case errors.Is(err, zstd.ErrWindowSizeExceeded):
		return &BodyError{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
			Message: fmt.Sprintf("the zstd body declares a window larger than the %d-byte body limit; compress with a smaller window (zstd --long is not needed) or send smaller batches", limit)}
	case coding != "" && wireErr == nil:
		// The bytes all arrived; the decoder refused them.
		return corrupt(coding, err)
	}
	return &BodyError{Status: http.StatusBadRequest, Code: CodeMalformedBody,
		Message: "the body could not be read completely; send it again"}
}

// wireReader remembers the error of the connection's reader, so that a
// decoder's complaint is told apart from a client that went away.
type wireReader struct {
	r   io.Reader
	err error
}

func (w *wireReader) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if err != nil && err != io.EOF {
		w.err = err
	}
	return n, err
}

// decoderMessage is the decoder's own complaint, which names no file,
// host or address.
func decoderMessage(err error) string {
	msg := err.Error()
	if len(msg) > 120 {
		msg = msg[:120]
	}
	return msg
}
