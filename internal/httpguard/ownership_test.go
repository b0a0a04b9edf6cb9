package httpguard_test

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/httpguard"
)

// read reads body (gzipped first when gz) through b.
func read(t *testing.T, b *httpguard.Body, body []byte, gz bool) ([]byte, func()) {
	t.Helper()
	r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
	if gz {
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		_, _ = zw.Write(body)
		_ = zw.Close()
		r = httptest.NewRequest("POST", "/", &z)
		r.Header.Set("Content-Encoding", "gzip")
	}
	got, release, err := b.Read(httptest.NewRecorder(), r)
	if err != nil {
		release()
		t.Fatalf("Read of %d bytes: %v", len(body), err)
	}
	return got, release
}

// content is a body of n bytes that no other (id, n) shares.
func content(id, n int) []byte {
	pattern := []byte(fmt.Sprintf("<%d:%d>", id, n))
	return bytes.Repeat(pattern, n/len(pattern)+1)[:n]
}

// TestBodyIsTheCallersUntilRelease: whatever other requests read
// meanwhile (small and large, plain and gzip, in other goroutines), a
// body read and not yet released keeps its bytes; its capacity is its
// length, so appending to it cannot write into a pooled buffer. Run with
// -race, it also shows no two requests share a buffer.
func TestBodyIsTheCallersUntilRelease(t *testing.T) {
	b := httpguard.NewBody(httpguard.BodyLimits{MaxBytes: 64 << 10, LargeBytes: 4 << 10, MaxLarge: 64, Wait: time.Second}, nil, "test")
	sizes := []int{0, 1, 100, 4 << 10, 4<<10 + 1, 20 << 10, 64 << 10}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				n, m := sizes[(g+i)%len(sizes)], sizes[(g+2*i+1)%len(sizes)]
				first, releaseFirst := read(t, b, content(g, n), i%2 == 0)
				second, releaseSecond := read(t, b, content(g+100, m), i%3 == 0)
				if !bytes.Equal(first, content(g, n)) || !bytes.Equal(second, content(g+100, m)) {
					t.Errorf("goroutine %d: a body held by the caller changed before its release", g)
				}
				if cap(first) != len(first) {
					t.Errorf("a body of %d bytes has capacity %d", len(first), cap(first))
				}
				_ = append(first, "appended"...)
				releaseFirst()
				if !bytes.Equal(second, content(g+100, m)) {
					t.Errorf("goroutine %d: releasing one body changed another", g)
				}
				releaseSecond()
			}
		}()
	}
	wg.Wait()
}

// TestBodyReleaseTwice: a second release neither frees a second slot nor
// returns the buffer to the pool twice (two later reads would then share
// it).
func TestBodyReleaseTwice(t *testing.T) {
	b := httpguard.NewBody(httpguard.BodyLimits{MaxBytes: 64 << 10, LargeBytes: 1 << 10, MaxLarge: 1, Wait: 50 * time.Millisecond}, nil, "test")
	for i := range 20 {
		_, releaseFirst := read(t, b, content(2, 512), false)
		releaseFirst()
		releaseFirst()
		second, releaseSecond := read(t, b, content(3, 512), false)
		third, releaseThird := read(t, b, content(4, 512), false)
		if !bytes.Equal(second, content(3, 512)) || !bytes.Equal(third, content(4, 512)) {
			t.Fatalf("round %d: two bodies held at once share a buffer", i)
		}
		releaseSecond()
		releaseThird()
	}
	large := content(1, 8<<10)
	_, release := read(t, b, large, false)
	release()
	release() // a second Release of the semaphore would panic
	// The one slot is free: a large body is read, and holds it.
	_, release = read(t, b, large, false)
	r := httptest.NewRequest("POST", "/", bytes.NewReader(large))
	if _, rel, err := b.Read(httptest.NewRecorder(), r); err == nil {
		rel()
		t.Fatal("a second large body was read while the only slot was held")
	} else if be, ok := err.(*httpguard.BodyError); !ok || be.Status != http.StatusServiceUnavailable {
		t.Fatalf("second large body: %v, want 503", err)
	}
	release()
}
