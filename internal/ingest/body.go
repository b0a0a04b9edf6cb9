package ingest

import (
	"net/http"
	"time"

	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/httpjson"
)

// Defaults of Options.LargeBodies fields left zero: the values of
// LARGE_BODY_BYTES and MAX_LARGE_BODIES_IN_FLIGHT.
const (
	defaultLargeBodyBytes = 1 << 20
	defaultMaxLargeBodies = 32
	largeBodyWait         = 250 * time.Millisecond
)

func newBodyReader(opt Options) *httpguard.Body {
	limits := opt.LargeBodies
	limits.MaxBytes = opt.MaxBodyBytes
	if limits.LargeBytes <= 0 {
		limits.LargeBytes = defaultLargeBodyBytes
	}
	if limits.MaxLarge <= 0 {
		limits.MaxLarge = defaultMaxLargeBodies
	}
	if limits.Wait <= 0 {
		limits.Wait = largeBodyWait
	}
	return httpguard.NewBody(limits, opt.Registry, "metering_ingest")
}

// readBody reads r's body, decoded per its Content-Encoding and within
// the limits; on error it has answered the request. release must be called
// when the request no longer holds the body.
func (a *API) readBody(w http.ResponseWriter, r *http.Request) (body []byte, release func(), ok bool) {
	body, release, err := a.body.Read(w, r)
	if err == nil {
		return body, release, true
	}
	be, isBody := err.(*httpguard.BodyError)
	if !isBody {
		be = &httpguard.BodyError{Status: http.StatusBadRequest, Code: httpguard.CodeMalformedBody, Message: "the body could not be read"}
	}
	reason := be.Code
	switch be.Code {
	case httpguard.CodeTooLarge:
		reason = "too_large"
	case httpguard.CodeOverloaded:
		reason = "large_bodies_busy"
		w.Header().Set("Retry-After", "1")
	}
	a.metrics.rejected.WithLabelValues(reason).Inc()
	httpjson.Error(w, be.Status, be.Code, be.Message)
	return nil, release, false
}
