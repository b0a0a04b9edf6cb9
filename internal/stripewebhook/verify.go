package stripewebhook

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v79/webhook"
)

// Tolerance is how far a signature's timestamp may be from our clock, in
// either direction: Stripe's own default for the past (stripe-go checks
// only that side), the same for the future.
const Tolerance = webhook.DefaultTolerance

var (
	errFuture = errors.New("signature timestamp too far in the future")
	errTooOld = errors.New("signature timestamp too old")
)

// verify checks the signature first, so that only a holder of the secret
// learns anything about timestamps, then the timestamp both ways.
func (h *Handler) verify(payload []byte, header string) error {
	if err := webhook.ValidatePayloadIgnoringTolerance(payload, header, h.secret); err != nil {
		return err
	}
	signedAt, err := signatureTime(header)
	if err != nil {
		return err
	}
	now := time.Now()
	switch {
	case signedAt.After(now.Add(Tolerance)):
		return fmt.Errorf("%w: signed at %s, %s ahead of this clock", errFuture, signedAt.UTC().Format(time.RFC3339), signedAt.Sub(now).Round(time.Second))
	case signedAt.Before(now.Add(-Tolerance)):
		return fmt.Errorf("%w: signed at %s, %s ago", errTooOld, signedAt.UTC().Format(time.RFC3339), now.Sub(signedAt).Round(time.Second))
	}
	return nil
}

// signatureTime reads t= from a Stripe-Signature header the way stripe-go
// does (the last t wins), so it is the timestamp the signature covered.
func signatureTime(header string) (time.Time, error) {
	var t time.Time
	found := false
	for pair := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k != "t" {
			continue
		}
		sec, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return time.Time{}, webhook.ErrInvalidHeader
		}
		t, found = time.Unix(sec, 0), true
	}
	if !found {
		return time.Time{}, webhook.ErrInvalidHeader
	}
	return t, nil
}
