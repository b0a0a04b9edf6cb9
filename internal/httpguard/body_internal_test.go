package httpguard

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestKeepHandsOverOnlyBuffersWithinTheBudget: the pooled buffer itself
// becomes the body only when its capacity fits what the body may hold
// (LargeBytes without a slot, MaxBytes with one); a buffer grown larger
// by an earlier body is copied out of and goes back to the pool, so the
// memory bound of Body holds for capacity, not only length.
func TestKeepHandsOverOnlyBuffersWithinTheBudget(t *testing.T) {
	b := NewBody(BodyLimits{MaxBytes: 1 << 20, LargeBytes: 1 << 10, MaxLarge: 1, Wait: time.Second}, nil, "test")
	buffer := func(capacity int, body string) *bytes.Buffer {
		buf := bytes.NewBuffer(make([]byte, 0, capacity))
		buf.WriteString(body)
		return buf
	}
	for _, tt := range []struct {
		name      string
		slot      bool
		capacity  int
		handsOver bool
	}{
		{"small body, small buffer", false, 1 << 10, true},
		{"small body, buffer of a large one", false, 64 << 10, false},
		{"large body, buffer within MaxBytes", true, 1 << 20, true},
		{"large body, buffer over MaxBytes", true, 2 << 20, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := &lease{body: b, ctx: context.Background(), slot: tt.slot}
			buf := buffer(tt.capacity, "abc")
			got := l.keep(buf)
			if string(got) != "abc" || cap(got) != len(got) {
				t.Fatalf("body %q with capacity %d, want \"abc\" with capacity 3", got, cap(got))
			}
			shared := &got[0] == &buf.Bytes()[0]
			if shared != tt.handsOver || (l.buf != nil) != tt.handsOver {
				t.Fatalf("buffer handed over = %v (lease holds it: %v), want %v", shared, l.buf != nil, tt.handsOver)
			}
			l.slot = false
			l.release()
			if l.buf != nil {
				t.Fatal("release kept the buffer")
			}
		})
	}
}
