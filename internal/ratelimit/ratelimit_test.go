package ratelimit_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/ratelimit"
)

func TestBucketArithmetic(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// 10 tokens per second, bucket of 20.
	l := ratelimit.New(10, 20)
	steps := []struct {
		at         int // ms after t0
		cost       int
		allowed    bool
		remaining  int
		retryAfter time.Duration
		reset      time.Duration
	}{
		{0, 20, true, 0, 0, 2 * time.Second},                      // a new bucket starts full: the whole burst passes
		{0, 1, false, 0, 100 * time.Millisecond, 2 * time.Second}, // empty: one token takes 1/10 s
		{100, 1, true, 0, 0, 2 * time.Second},                     // refilled exactly one
		{600, 5, true, 0, 0, 2 * time.Second},                     // 0.5 s later: 5 tokens back
		{700, 3, false, 1, 200 * time.Millisecond, 1900 * time.Millisecond},
		{10_000, 21, false, 20, 0, 0}, // idle: refill stops at the burst; cost above burst never passes
		{10_000, 20, true, 0, 0, 2 * time.Second},
	}
	for i, s := range steps {
		d := l.Allow("k", s.cost, at(s.at))
		if d.Allowed != s.allowed || d.Remaining != s.remaining || d.RetryAfter != s.retryAfter || d.Reset != s.reset {
			t.Fatalf("step %d (%+v): got %+v", i, s, d)
		}
	}
	if d := l.Allow("k", 21, at(20_000)); !d.Never {
		t.Fatalf("cost over burst: %+v, want Never", d)
	}
}

func TestKeysAreIndependentAndSwept(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC)
	l := ratelimit.New(100, 100)
	for i := range 1000 {
		if d := l.Allow(fmt.Sprint("ip-", i), 100, t0); !d.Allowed {
			t.Fatalf("key %d denied: %+v", i, d)
		}
	}
	if l.Len() != 1000 {
		t.Fatalf("Len = %d, want 1000", l.Len())
	}
	// Two seconds later every bucket is full again, so all are forgotten.
	l.Allow("fresh", 1, t0.Add(2*time.Second))
	if l.Len() != 1 {
		t.Fatalf("Len after sweep = %d, want 1", l.Len())
	}
}

func TestHeaders(t *testing.T) {
	tests := []struct {
		d    ratelimit.Decision
		want map[string]string
	}{
		{ratelimit.Decision{Allowed: true, Limit: 20, Remaining: 7, Reset: 1300 * time.Millisecond},
			map[string]string{"RateLimit-Limit": "20", "RateLimit-Remaining": "7", "RateLimit-Reset": "2", "Retry-After": ""}},
		{ratelimit.Decision{Limit: 20, Remaining: 0, Reset: 2 * time.Second, RetryAfter: 100 * time.Millisecond},
			map[string]string{"Retry-After": "1", "RateLimit-Remaining": "0", "RateLimit-Reset": "2"}},
		{ratelimit.Decision{Limit: 20, RetryAfter: 2500 * time.Millisecond},
			map[string]string{"Retry-After": "3"}},
	}
	for _, tt := range tests {
		h := http.Header{}
		tt.d.SetHeaders(h)
		for k, v := range tt.want {
			if h.Get(k) != v {
				t.Errorf("%+v: %s = %q, want %q", tt.d, k, h.Get(k), v)
			}
		}
	}
}
