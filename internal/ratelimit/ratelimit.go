// Package ratelimit keeps a token bucket per key (an API key, a client IP)
// and says, for each request, whether it may pass and what to tell the
// client in RateLimit-* and Retry-After headers.
//
// Invariant: memory is bounded by the number of keys seen within one
// refill period; a bucket idle long enough to be full again is forgotten,
// which is indistinguishable from keeping it.
package ratelimit

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Decision is the outcome of one Allow call.
type Decision struct {
	Allowed bool
	// Limit is the bucket size (burst).
	Limit int
	// Remaining is the whole tokens left after this request.
	Remaining int
	// Reset is how long until the bucket is full again.
	Reset time.Duration
	// RetryAfter is how long until a request of the same cost can pass;
	// zero when allowed. Never when the cost exceeds the bucket size.
	RetryAfter time.Duration
	// Never is true when the cost exceeds the bucket size, so no wait helps.
	Never bool
}

// Limiter is a set of token buckets that refill at Rate tokens per second
// up to Burst.
type Limiter struct {
	rate  rate.Limit
	burst int

	mu        sync.Mutex
	buckets   map[string]*rate.Limiter
	lastSweep time.Time
}

// New returns a Limiter refilling perSecond tokens per second up to burst.
func New(perSecond float64, burst int) *Limiter {
	return &Limiter{rate: rate.Limit(perSecond), burst: burst, buckets: map[string]*rate.Limiter{}}
}

// Allow takes cost tokens from key's bucket at now, if it has them.
func (l *Limiter) Allow(key string, cost int, now time.Time) Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	b := l.buckets[key]
	if b == nil {
		b = rate.NewLimiter(l.rate, l.burst)
		l.buckets[key] = b
	}
	d := Decision{Limit: l.burst}
	if cost > l.burst {
		d.Never = true
	} else {
		d.Allowed = b.AllowN(now, cost)
	}
	tokens := b.TokensAt(now)
	d.Remaining = int(math.Floor(max(tokens, 0)))
	d.Reset = l.durationFor(float64(l.burst) - tokens)
	if !d.Allowed && !d.Never {
		d.RetryAfter = l.durationFor(float64(cost) - tokens)
	}
	return d
}

func (l *Limiter) durationFor(tokens float64) time.Duration {
	if tokens <= 0 {
		return 0
	}
	return time.Duration(tokens / float64(l.rate) * float64(time.Second))
}

// sweep forgets buckets that are full again, at most once per refill period.
func (l *Limiter) sweep(now time.Time) {
	full := l.durationFor(float64(l.burst))
	if now.Sub(l.lastSweep) < max(full, time.Second) {
		return
	}
	l.lastSweep = now
	for k, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, k)
		}
	}
}

// Len returns the number of buckets held.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// SetHeaders writes the RateLimit-Limit, RateLimit-Remaining and
// RateLimit-Reset headers, and Retry-After when d denies the request.
// Seconds are rounded up so a client that waits them succeeds.
func (d Decision) SetHeaders(h http.Header) {
	h.Set("RateLimit-Limit", strconv.Itoa(d.Limit))
	h.Set("RateLimit-Remaining", strconv.Itoa(d.Remaining))
	h.Set("RateLimit-Reset", strconv.Itoa(ceilSeconds(d.Reset)))
	if !d.Allowed && !d.Never {
		h.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(d.RetryAfter))))
	}
}

func ceilSeconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}
