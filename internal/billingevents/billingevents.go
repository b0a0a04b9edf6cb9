// Package billingevents is the contract of the billing.events topic: the
// envelope {"id","type","tenant","occurred_at","data":{...}}, one typed
// payload per event type, and Enqueue, which queues events in the
// outbox (Kafka key the tenant, header event-id) inside the caller's
// transaction, so an event is published if and only if the change that
// caused it commits.
//
// To emit an event: build its payload, wrap it with New, and pass the
// result to Enqueue with the transaction that records the change:
//
//	ev, err := billingevents.New(tenant, at, billingevents.GrantCreated{GrantID: id, ...})
//	...
//	err = billingevents.Enqueue(ctx, tx, ev)
//
// Invariant: an event's id is a function of its type, its tenant and its
// payload's natural key only (each payload type documents its key;
// spend.threshold's is the webhook notifications' id of the same fact), so
// re-emitting the same fact, even with other payload fields or another
// occurred_at, yields the same id, and two different facts yield
// different ids (TestIDsAreAFunctionOfTheFact). Consumers deduplicate on
// the id: the relay publishes at least once.
package billingevents

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/internal/storage/outbox"
	"github.com/usagemeter/metering/internal/topics"
)

// Type names an event type; it is the envelope's "type".
type Type string

// The event types of billing.events.
const (
	TypePlanChanged        Type = "plan.changed"
	TypeGrantCreated       Type = "grant.created"
	TypeGrantExpired       Type = "grant.expired"
	TypeGrantVoided        Type = "grant.voided"
	TypeAdjustmentRecorded Type = "adjustment.recorded"
	TypeOverageStarted     Type = "overage.started"
	TypePeriodClosed       Type = "period.closed"
	TypeSpendThreshold     Type = "spend.threshold"
)

// Types lists every event type, in the order above.
var Types = []Type{TypePlanChanged, TypeGrantCreated, TypeGrantExpired, TypeGrantVoided,
	TypeAdjustmentRecorded, TypeOverageStarted, TypePeriodClosed, TypeSpendThreshold}

// HeaderEventID is the Kafka header that carries the event's id, so a
// consumer can deduplicate without decoding the value.
const HeaderEventID = "event-id"

// HeaderEventType is the Kafka header that carries the event's type.
const HeaderEventType = "event-type"

// Payload is the data of one event type: one of the payload structs of
// this package (the interface is closed).
type Payload interface {
	// Type is the event type the payload belongs to.
	Type() Type
	// naturalKey is the parts that identify the fact, beside the type
	// and the tenant; an error when one is missing.
	naturalKey() ([]string, error)
}

// Event is one message of billing.events.
type Event struct {
	// ID is stable: see ID.
	ID     string `json:"id"`
	Type   Type   `json:"type"`
	Tenant string `json:"tenant"`
	// OccurredAt is when the fact happened (UTC); informational, not part
	// of the id.
	OccurredAt time.Time `json:"occurred_at"`
	Data       Payload   `json:"data"`
}

// idNamespace is the UUIDv5 namespace of event ids (itself the UUIDv5 of
// the topic's name in the URL namespace).
var idNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("kafka:"+topics.BillingEvents))

// ID returns the id of the fact (typ, tenant, key): a UUIDv5 over the
// length-prefixed parts, so no two different facts share a name.
func ID(typ Type, tenant string, key ...string) string {
	var name []byte
	for _, p := range append([]string{string(typ), tenant}, key...) {
		name = strconv.AppendInt(name, int64(len(p)), 10)
		name = append(name, ':')
		name = append(name, p...)
	}
	return uuid.NewSHA1(idNamespace, name).String()
}

// New returns the event of data for tenant, with its id, occurring at
// occurredAt (stored in UTC).
func New(tenant string, occurredAt time.Time, data Payload) (Event, error) {
	if tenant == "" {
		return Event{}, errors.New("billing event: tenant is empty")
	}
	if data == nil {
		return Event{}, errors.New("billing event: no payload")
	}
	key, err := data.naturalKey()
	if err != nil {
		return Event{}, fmt.Errorf("billing event %s of tenant %q: %w", data.Type(), tenant, err)
	}
	id := ID(data.Type(), tenant, key...)
	if data.Type() == TypeSpendThreshold {
		id = spendID(tenant, key...)
	}
	return Event{ID: id, Type: data.Type(), Tenant: tenant, OccurredAt: occurredAt.UTC(), Data: data}, nil
}

// spendNamespace is the UUIDv5 namespace of the ids of spend thresholds,
// the webhook notifications' (they named spend thresholds first).
var spendNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("usagemeter:webhooks"))

// spendID is the id of a spend threshold of tenant whose natural key is
// key (period start, threshold): a UUIDv5 over the length-prefixed type,
// tenant and key, in spendNamespace.
func spendID(tenant string, key ...string) string {
	var name []byte
	for _, p := range append([]string{string(TypeSpendThreshold), tenant}, key...) {
		name = strconv.AppendInt(name, int64(len(p)), 10)
		name = append(name, ':')
		name = append(name, p...)
	}
	return uuid.NewSHA1(spendNamespace, name).String()
}

// SpendThresholdID is the id of the spend threshold threshold (a
// decimal) of tenant's billing period starting at periodStart: the id of
// its spend.threshold event on billing.events and of its webhook
// notification, whichever path noticed it.
func SpendThresholdID(tenant string, periodStart time.Time, threshold string) (string, error) {
	key, err := SpendThreshold{Threshold: Amount(threshold), PeriodStart: periodStart}.naturalKey()
	if err != nil {
		return "", fmt.Errorf("spend threshold of %s: %w", tenant, err)
	}
	return spendID(tenant, key...), nil
}

// Message is ev as the outbox row that carries it to billing.events.
func (ev Event) Message() (outbox.Message, error) {
	if ev.ID == "" || ev.Data == nil || ev.Data.Type() != ev.Type {
		return outbox.Message{}, fmt.Errorf("billing event %q of type %s was not made by New", ev.ID, ev.Type)
	}
	v, err := json.Marshal(ev)
	if err != nil {
		return outbox.Message{}, fmt.Errorf("encoding billing event %s: %w", ev.ID, err)
	}
	return outbox.Message{Topic: topics.BillingEvents, Key: []byte(ev.Tenant), Value: v,
		Headers: map[string]string{HeaderEventID: ev.ID, HeaderEventType: string(ev.Type)}}, nil
}

// Enqueue queues evs for billing.events in tx, in order: they are
// published, at least once, if and only if tx commits. Called with no
// event it does nothing.
func Enqueue(ctx context.Context, tx outbox.Execer, evs ...Event) error {
	msgs := make([]outbox.Message, len(evs))
	for i, ev := range evs {
		m, err := ev.Message()
		if err != nil {
			return err
		}
		msgs[i] = m
	}
	if err := outbox.Enqueue(ctx, tx, msgs...); err != nil {
		return fmt.Errorf("queueing %d billing events: %w", len(evs), err)
	}
	return nil
}

// Decode reads one billing.events value into an Event whose Data is the
// payload struct of its type (a value, not a pointer).
func Decode(b []byte) (Event, error) {
	var raw struct {
		ID         string          `json:"id"`
		Type       Type            `json:"type"`
		Tenant     string          `json:"tenant"`
		OccurredAt time.Time       `json:"occurred_at"`
		Data       json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return Event{}, fmt.Errorf("decoding billing event: %w", err)
	}
	ev := Event{ID: raw.ID, Type: raw.Type, Tenant: raw.Tenant, OccurredAt: raw.OccurredAt}
	var err error
	switch raw.Type {
	case TypePlanChanged:
		ev.Data, err = decodeData[PlanChanged](raw.Data)
	case TypeGrantCreated:
		ev.Data, err = decodeData[GrantCreated](raw.Data)
	case TypeGrantExpired:
		ev.Data, err = decodeData[GrantExpired](raw.Data)
	case TypeGrantVoided:
		ev.Data, err = decodeData[GrantVoided](raw.Data)
	case TypeAdjustmentRecorded:
		ev.Data, err = decodeData[AdjustmentRecorded](raw.Data)
	case TypeOverageStarted:
		ev.Data, err = decodeData[OverageStarted](raw.Data)
	case TypePeriodClosed:
		ev.Data, err = decodeData[PeriodClosed](raw.Data)
	case TypeSpendThreshold:
		ev.Data, err = decodeData[SpendThreshold](raw.Data)
	default:
		return Event{}, fmt.Errorf("decoding billing event %q: unknown type %q", raw.ID, raw.Type)
	}
	if err != nil {
		return Event{}, fmt.Errorf("decoding billing event %q (%s): %w", raw.ID, raw.Type, err)
	}
	return ev, nil
}

func decodeData[P Payload](b json.RawMessage) (Payload, error) {
	var p P
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	return p, nil
}

// keyTime is a time as a natural-key part: UTC, nanoseconds.
func keyTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// need returns an error naming the first empty part.
func need(parts ...string) error {
	for i := 0; i+1 < len(parts); i += 2 {
		if parts[i+1] == "" {
			return fmt.Errorf("%s is empty", parts[i])
		}
	}
	return nil
}

// Amount is an exact decimal number, such as "1200" or "-12.50", carried
// as a JSON string so that no reader rounds it through a float.
type Amount string

// Valid reports whether a is a finite decimal: digits with an optional
// sign and fraction, no exponent.
func (a Amount) Valid() bool {
	s := string(a)
	if s == "" {
		return false
	}
	if s[0] == '-' || s[0] == '+' {
		s = s[1:]
	}
	digits, dot := 0, false
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		default:
			return false
		}
	}
	return digits > 0
}

// Rat is a as an exact rational; ok is false when a is not Valid.
func (a Amount) Rat() (r *big.Rat, ok bool) {
	if !a.Valid() {
		return nil, false
	}
	return new(big.Rat).SetString(string(a))
}

func amountErr(name string, a Amount) error {
	if !a.Valid() {
		return fmt.Errorf("%s %q is not a decimal number", name, string(a))
	}
	return nil
}
