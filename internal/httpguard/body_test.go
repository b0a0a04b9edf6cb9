package httpguard_test

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/usagemeter/metering/internal/httpguard"
)

// TestBombMemoryIsBounded: a body that decompresses to 32 MiB, sent
// against a 1 MiB limit, is refused with 413 after allocating a few times
// the limit, not the decompressed size.
func TestBombMemoryIsBounded(t *testing.T) {
	const limit = 1 << 20
	plain := strings.Repeat("[", 32<<20)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(plain))
	_ = zw.Close()
	zenc, _ := zstd.NewWriter(nil)
	zs := zenc.EncodeAll([]byte(plain), nil)
	// A stream with a window within the limit, so the decoder does decode.
	var zsmall bytes.Buffer
	zw2, _ := zstd.NewWriter(&zsmall, zstd.WithWindowSize(limit/2))
	_, _ = zw2.Write([]byte(plain))
	_ = zw2.Close()
	plain = ""
	b := httpguard.NewBody(httpguard.BodyLimits{MaxBytes: limit, LargeBytes: limit / 4, MaxLarge: 4, Wait: time.Second}, nil, "test")
	for _, tt := range []struct {
		name, encoding string
		body           []byte
	}{{"gzip", "gzip", gz.Bytes()}, {"zstd one frame", "zstd", zs}, {"zstd small window", "zstd", zsmall.Bytes()}} {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			read := func() *httpguard.BodyError {
				r := httptest.NewRequest("POST", "/", bytes.NewReader(tt.body))
				r.Header.Set("Content-Encoding", tt.encoding)
				_, release, err := b.Read(httptest.NewRecorder(), r)
				release()
				be, _ := err.(*httpguard.BodyError)
				return be
			}
			read() // pools warm
			runtime.GC()
			runtime.ReadMemStats(&before)
			be := read()
			runtime.ReadMemStats(&after)
			if be == nil || be.Status != http.StatusRequestEntityTooLarge {
				t.Fatalf("%d compressed bytes of a 32 MiB body: %v, want 413", len(tt.body), be)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%s: %d compressed bytes, %d bytes allocated", tt.encoding, len(tt.body), alloc)
			if alloc > 16*limit {
				t.Errorf("reading the bomb allocated %d bytes, over 16 × the %d limit", alloc, limit)
			}
		})
	}
}
