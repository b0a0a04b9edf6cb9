package events

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/events/fieldcheck"
)

// Limits of the event contract.
const (
	// MaxIDLen is the longest idempotency id, in bytes of printable ASCII.
	MaxIDLen = 128
	// MaxNameLen is the longest tenant or metric name.
	MaxNameLen = fieldcheck.MaxNameLen
	// MaxValue is the largest value an event may carry: 2^53, the largest
	// integer every JSON implementation represents exactly.
	MaxValue int64 = 1 << 53
	// MaxSourceLen is the longest source, in bytes.
	MaxSourceLen = 256
	// MaxProperties is the most properties an event may carry.
	MaxProperties = 32
	// MaxPropertyKeyLen and MaxPropertyValueLen bound each property, in bytes.
	MaxPropertyKeyLen   = fieldcheck.MaxPropertyKeyLen
	MaxPropertyValueLen = fieldcheck.MaxPropertyValueLen

	// DefaultHorizon is how old an event may be: the dedup horizon, which is
	// also Stripe's limit for meter events.
	DefaultHorizon = 35 * 24 * time.Hour
	// DefaultMaxFuture is how far ahead of the clock an event time may be.
	DefaultMaxFuture = 5 * time.Minute
)

// Event is one usage event: Value units of Metric used by Tenant at Time.
type Event struct {
	// ID is the idempotency key, unique per tenant: 1-128 printable ASCII
	// characters. NewID makes one; an order or request id works too.
	ID string
	// Tenant is the customer the usage is billed to.
	Tenant string
	// Metric names what was used, such as "api_calls" or "tokens".
	Metric string
	// Value is how much was used, in the smallest unit (0 ≤ Value ≤ MaxValue).
	Value int64
	// Time is when the usage happened; it decides the window it counts in.
	Time time.Time
	// Source optionally names the emitting service.
	Source string
	// Properties are optional string dimensions (at most 32).
	Properties map[string]string
}

// New returns an event with a fresh UUIDv7 id and the current time. Keep the
// returned value if you may need to send it again: resending the same id is
// safe, making a new one is not.
func New(tenant, metric string, value int64) Event {
	return Event{ID: NewID(), Tenant: tenant, Metric: metric, Value: value, Time: time.Now().UTC()}
}

// NewID returns a new UUIDv7, time-ordered so ids of nearby events sort
// together in indexes.
func NewID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// NewV7 fails only when the system's random source does.
		panic(fmt.Sprintf("events: generating UUIDv7: %v", err))
	}
	return id.String()
}

// FieldError is one reason an event was rejected.
type FieldError struct {
	// Index is the event's position in the request or batch (0 for a single
	// event).
	Index int `json:"index"`
	// Field is the offending field, such as "value" or "properties.region".
	Field string `json:"field"`
	// Message says what is wrong and what is expected.
	Message string `json:"message"`
}

func (e FieldError) String() string {
	return fmt.Sprintf("event %d: %s: %s", e.Index, e.Field, e.Message)
}

// ValidationError lists every field error of one or more events.
type ValidationError struct {
	Errors []FieldError
}

func (e *ValidationError) Error() string {
	if len(e.Errors) == 1 {
		return "invalid event: " + e.Errors[0].String()
	}
	parts := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		parts[i] = fe.String()
	}
	return fmt.Sprintf("%d invalid fields: %s", len(e.Errors), strings.Join(parts, "; "))
}

// AsValidationError reports whether err is or wraps a *ValidationError.
func AsValidationError(err error) (*ValidationError, bool) {
	var ve *ValidationError
	ok := errors.As(err, &ve)
	return ve, ok
}

// Validator checks events against the contract. Its zero value uses the
// defaults (DefaultHorizon, DefaultMaxFuture, time.Now).
type Validator struct {
	// Horizon is how old an event may be; 0 means DefaultHorizon.
	Horizon time.Duration
	// MaxFuture is how far ahead of Now an event may be; 0 means DefaultMaxFuture.
	MaxFuture time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Validate returns every field error of e, all tagged with index, or nil.
func (v Validator) Validate(index int, e Event) []FieldError {
	errs := fieldErrors{index: index}
	errs.check("id", checkID(e.ID))
	errs.check("tenant", fieldcheck.Name(e.Tenant))
	errs.check("metric", fieldcheck.Name(e.Metric))
	if e.Value < 0 {
		errs.add("value", "must be at least 0, got %d", e.Value)
	} else if e.Value > MaxValue {
		errs.add("value", "must be at most 2^53 (%d), got %d", MaxValue, e.Value)
	}
	v.checkTime(&errs, e.Time)
	if len(e.Source) > MaxSourceLen {
		errs.add("source", "must be at most %d bytes, got %d", MaxSourceLen, len(e.Source))
	} else {
		errs.check("source", fieldcheck.Text(e.Source))
	}
	checkProperties(&errs, e.Properties)
	return errs.list
}

// checkTime adds the error of an event time that is missing, further
// ahead of the clock than MaxFuture or older than Horizon.
func (v Validator) checkTime(errs *fieldErrors, t time.Time) {
	if t.IsZero() {
		errs.add("time", "is required (an RFC 3339 timestamp such as 2026-11-21T19:00:00Z)")
		return
	}
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	horizon, future := v.Horizon, v.MaxFuture
	if horizon <= 0 {
		horizon = DefaultHorizon
	}
	if future <= 0 {
		future = DefaultMaxFuture
	}
	if t.After(now.Add(future)) {
		errs.add("time", "is %s ahead of the server clock; at most %s is allowed", aheadBy(t, now), future)
	} else if t.Before(now.Add(-horizon)) {
		errs.add("time", "is older than the %s dedup horizon; such usage can no longer be counted exactly once", horizon)
	}
}

// checkProperties adds the errors of too many properties and, in key
// order, the first problem of each key or its value.
//
// Two keys equal in any case (under Unicode simple case folding, as the
// API's decoder compares keys) would make the encoded event one the API
// and the aggregator refuse: the later in byte order is refused, naming
// the earlier, with the decoder's message.
func checkProperties(errs *fieldErrors, props map[string]string) {
	if len(props) > MaxProperties {
		errs.add("properties", "must have at most %d keys, got %d", MaxProperties, len(props))
	}
	var folded map[string]string // fold key -> the first key of that fold
	for _, k := range sortedKeys(props) {
		fk := foldKey(k)
		if first, ok := folded[fk]; ok {
			errs.add("properties."+k, "appears twice in the same object, also as %q (keys are compared after unescaping and in any case); send each field once", first)
			continue
		}
		if folded == nil {
			folded = make(map[string]string, len(props))
		}
		folded[fk] = k
		errs.check(fieldcheck.Property("properties", k, props[k]))
	}
}

// foldKey maps s to a key equal for strings equal under Unicode simple
// case folding (strings.EqualFold): each rune becomes the smallest rune
// of its folding orbit.
func foldKey(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		b.WriteRune(m)
	}
	return b.String()
}

// fieldErrors collects the field errors of the event at index.
type fieldErrors struct {
	index int
	list  []FieldError
}

// add adds an error of field, its message formatted as by fmt.Sprintf.
func (fe *fieldErrors) add(field, format string, args ...any) {
	fe.list = append(fe.list, FieldError{Index: fe.index, Field: field, Message: fmt.Sprintf(format, args...)})
}

// check adds the error msg of field, unless msg is empty.
func (fe *fieldErrors) check(field, msg string) {
	if msg != "" {
		fe.list = append(fe.list, FieldError{Index: fe.index, Field: field, Message: msg})
	}
}

// has reports whether field has an error already.
func (fe *fieldErrors) has(field string) bool {
	for _, e := range fe.list {
		if e.Field == field {
			return true
		}
	}
	return false
}

// Validate checks e with the default Validator and returns a
// *ValidationError listing every field error, or nil.
func (e Event) Validate() error {
	if errs := (Validator{}).Validate(0, e); len(errs) > 0 {
		return &ValidationError{Errors: errs}
	}
	return nil
}

func checkID(id string) string {
	if id == "" {
		return "is required (1-128 printable ASCII characters; events.NewID makes one)"
	}
	if len(id) > MaxIDLen {
		return fmt.Sprintf("must be at most %d characters, got %d", MaxIDLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c > 0x7e {
			return fmt.Sprintf("must be printable ASCII; byte %d is 0x%02x", i, c)
		}
	}
	return ""
}

// ValidName reports whether s is a valid tenant or metric name.
func ValidName(s string) bool { return fieldcheck.Name(s) == "" }

// aheadBy says how far t is after now: a duration, or in days when that
// overflows time.Duration (about 292 years) or reads badly.
func aheadBy(t, now time.Time) string {
	if d := t.Sub(now); d < 48*time.Hour {
		return d.Round(time.Second).String()
	}
	return fmt.Sprintf("%d days", (t.Unix()-now.Unix()+43200)/86400)
}
