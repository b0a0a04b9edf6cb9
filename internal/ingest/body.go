package ingest

import (
	"bytes"
	"io"
	"net/http"
	"sync"

	"github.com/segmentio/kafka-go"
)

type kafkaMessage = kafka.Message

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readBody reads at most limit bytes of r's body; a larger body yields
// *http.MaxBytesError.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bufPool.Put(buf)
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit)); err != nil && err != io.EOF {
		return nil, err
	}
	return bytes.Clone(buf.Bytes()), nil
}
