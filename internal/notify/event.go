// Package notify turns the product's facts into signed webhook
// notifications: it decodes the source topics (quota.breaches,
// billing.events, usage.anomalies) and the biller's periodic checks
// (grants about to expire, projected bills past a spend threshold) into
// events with stable ids, matches them to tenants' endpoints, queues one
// delivery per (endpoint, event id), and sends deliveries signed with
// HMAC-SHA256, retried with exponential backoff and jitter until their
// retry budget is spent. It holds no SQL: the queue is
// internal/storage/webhooks.
//
// Order is best effort: an endpoint's deliveries due together are sent
// one after another in the order they were queued, but a failed one is
// retried later without holding back those queued after it, so receivers
// order by "created" and deduplicate by "id".
//
// Invariant: an event's id is a function of the fact only (the source
// message's own id, or the grant and its expiry, or the tenant, period
// and threshold), and its body is fixed when queued, so every attempt and
// every redelivery of one event to one endpoint carries the same id and
// bytes, and one endpoint is queued one delivery per event id however
// often the fact is read (TestRedeliveredMessageQueuesOnce,
// TestSpendThresholdFiresOnce).
package notify

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/events/jsonscan"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/topics"
)

// Event kinds an endpoint may subscribe to; each is an event's "type".
const (
	KindQuotaWarning   = "quota.warning"
	KindQuotaExceeded  = "quota.exceeded"
	KindQuotaBlocked   = "quota.blocked"
	KindAnomalySpike   = "anomaly.spike"
	KindAnomalyDrop    = "anomaly.drop"
	KindOverageStarted = "overage.started"
	KindGrantExpiring  = "grant.expiring"
	KindGrantExpired   = "grant.expired"
	KindSpendThreshold = "spend.threshold"
)

// Kinds lists every kind, in the order above.
var Kinds = []string{KindQuotaWarning, KindQuotaExceeded, KindQuotaBlocked, KindAnomalySpike, KindAnomalyDrop,
	KindOverageStarted, KindGrantExpiring, KindGrantExpired, KindSpendThreshold}

// Source topics, named in internal/topics. AnomaliesTopic is the anomaly
// detector's (payload {"id","type":"anomaly.spike"|"anomaly.drop","tenant",...}).
const (
	QuotaBreachesTopic = topics.QuotaBreaches
	BillingEventsTopic = topics.BillingEvents
	AnomaliesTopic     = topics.UsageAnomalies
)

// Topics are the topics the notification reader reads.
var Topics = []string{QuotaBreachesTopic, BillingEventsTopic, AnomaliesTopic}

// Event is one notification: the body of every delivery of it.
type Event struct {
	ID      string
	Type    string
	Created time.Time
	Tenant  string
	// Data is the event's JSON object.
	Data json.RawMessage
	// Threshold is, for spend.threshold, the threshold crossed (matching
	// sends it to endpoints that set it, see Matches).
	Threshold string
	// PlanThreshold is, for spend.threshold, that the threshold is one of
	// the tenant's plan (read from billing.events), so endpoints that set
	// no thresholds of their own get it too.
	PlanThreshold bool
}

// Body is the JSON body every delivery of e sends:
// {"id","type","created","tenant","data"}, created in Unix seconds.
func (e Event) Body() ([]byte, error) {
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage(`{}`)
	}
	b, err := json.Marshal(struct {
		ID      string          `json:"id"`
		Type    string          `json:"type"`
		Created int64           `json:"created"`
		Tenant  string          `json:"tenant"`
		Data    json.RawMessage `json:"data"`
	}{e.ID, e.Type, e.Created.Unix(), e.Tenant, data})
	if err != nil {
		return nil, fmt.Errorf("encoding notification %s: %w", e.ID, err)
	}
	return b, nil
}

// ErrIgnored is returned for a source message that is no notification
// (a billing event of another type, say).
var ErrIgnored = errors.New("not a notification")

// scan bounds a source message before anything decodes it.
func scan(b []byte) error {
	issues, err := jsonscan.Scan(b, jsonscan.Options{})
	if err != nil {
		return err
	}
	if len(issues) > 0 {
		return fmt.Errorf("field %q appears twice", issues[0].Path)
	}
	return nil
}

// Decode turns a message of topic into its notification; ErrIgnored when
// it is none, another error when it cannot be read.
func Decode(topic string, value []byte) (Event, error) {
	if err := scan(value); err != nil {
		return Event{}, fmt.Errorf("%s message: %w", topic, err)
	}
	switch topic {
	case QuotaBreachesTopic:
		return decodeBreach(value)
	case BillingEventsTopic:
		return decodeBillingEvent(value)
	case AnomaliesTopic:
		return decodeAnomaly(value)
	}
	return Event{}, fmt.Errorf("topic %s carries no notifications", topic)
}

func decodeBreach(value []byte) (Event, error) {
	var b struct {
		BreachID   string    `json:"breach_id"`
		Tenant     string    `json:"tenant"`
		Threshold  string    `json:"threshold"`
		DetectedAt time.Time `json:"detected_at"`
	}
	if err := json.Unmarshal(value, &b); err != nil {
		return Event{}, fmt.Errorf("quota.breaches message: %w", err)
	}
	if b.BreachID == "" || b.Tenant == "" {
		return Event{}, errors.New("quota.breaches message: no breach_id or tenant")
	}
	kind := "quota." + b.Threshold
	if !slices.Contains([]string{KindQuotaWarning, KindQuotaExceeded, KindQuotaBlocked}, kind) {
		return Event{}, fmt.Errorf("quota.breaches message %s: unknown threshold %q", b.BreachID, b.Threshold)
	}
	return Event{ID: b.BreachID, Type: kind, Created: b.DetectedAt.UTC(), Tenant: b.Tenant, Data: compact(value)}, nil
}

func decodeBillingEvent(value []byte) (Event, error) {
	var ev struct {
		ID         string          `json:"id"`
		Type       string          `json:"type"`
		Tenant     string          `json:"tenant"`
		OccurredAt time.Time       `json:"occurred_at"`
		Data       json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(value, &ev); err != nil {
		return Event{}, fmt.Errorf("billing.events message: %w", err)
	}
	if ev.Type != KindOverageStarted && ev.Type != KindGrantExpired && ev.Type != KindSpendThreshold {
		return Event{}, ErrIgnored
	}
	if ev.ID == "" || ev.Tenant == "" {
		return Event{}, fmt.Errorf("billing.events %s message: no id or tenant", ev.Type)
	}
	out := Event{ID: ev.ID, Type: ev.Type, Created: ev.OccurredAt.UTC(), Tenant: ev.Tenant, Data: compact(ev.Data)}
	if ev.Type == KindSpendThreshold {
		// A plan's spend threshold: the id is the one SpendThreshold
		// gives the same crossing, so the periodic check and this message
		// queue one delivery per endpoint.
		var d struct {
			Threshold string `json:"threshold"`
		}
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return Event{}, fmt.Errorf("billing.events spend.threshold %s: %w", ev.ID, err)
		}
		r, ok := new(big.Rat).SetString(d.Threshold)
		if !ok || r.Sign() <= 0 {
			return Event{}, fmt.Errorf("billing.events spend.threshold %s: threshold %q is no positive decimal", ev.ID, d.Threshold)
		}
		out.Threshold, out.PlanThreshold = r.RatString(), true
	}
	return out, nil
}

func decodeAnomaly(value []byte) (Event, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(value, &fields); err != nil {
		return Event{}, fmt.Errorf("usage.anomalies message: %w", err)
	}
	var id, typ, tenant string
	var detected time.Time
	for k, p := range map[string]any{"id": &id, "type": &typ, "tenant": &tenant, "detected_at": &detected} {
		if raw, ok := fields[k]; ok {
			if err := json.Unmarshal(raw, p); err != nil {
				return Event{}, fmt.Errorf("usage.anomalies message: %s: %w", k, err)
			}
		}
	}
	if typ != KindAnomalySpike && typ != KindAnomalyDrop {
		return Event{}, fmt.Errorf("usage.anomalies message %s: unknown type %q", id, typ)
	}
	if id == "" || tenant == "" {
		return Event{}, errors.New("usage.anomalies message: no id or tenant")
	}
	delete(fields, "id")
	delete(fields, "type")
	delete(fields, "tenant")
	data, err := json.Marshal(fields) // keys sorted
	if err != nil {
		return Event{}, fmt.Errorf("usage.anomalies message %s: %w", id, err)
	}
	return Event{ID: id, Type: typ, Created: detected.UTC(), Tenant: tenant, Data: data}, nil
}

func compact(b []byte) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return json.RawMessage(b)
	}
	return buf.Bytes()
}

// idNamespace is the UUIDv5 namespace of the ids of the events this
// package makes itself (grant.expiring, spend.threshold).
var idNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("usagemeter:webhooks"))

// eventID is the UUIDv5 of length-prefixed parts.
func eventID(parts ...string) string {
	var name []byte
	for _, p := range parts {
		name = strconv.AppendInt(name, int64(len(p)), 10)
		name = append(name, ':')
		name = append(name, p...)
	}
	return uuid.NewSHA1(idNamespace, name).String()
}

// Grant is what grant.expiring says of a grant.
type Grant struct {
	ID        string    `json:"grant_id"`
	Meter     string    `json:"meter"`
	Amount    int64     `json:"amount"`
	ExpiresAt time.Time `json:"expires_at"`
}

// GrantExpiring is the grant.expiring event of tenant's grant g, noticed
// at now. Its id depends on the grant and its expiry only.
func GrantExpiring(tenant string, g Grant, now time.Time) (Event, error) {
	g.ExpiresAt = g.ExpiresAt.UTC()
	data, err := json.Marshal(g)
	if err != nil {
		return Event{}, fmt.Errorf("encoding grant.expiring of %s: %w", g.ID, err)
	}
	return Event{ID: eventID(KindGrantExpiring, tenant, g.ID, g.ExpiresAt.Format(time.RFC3339)), Type: KindGrantExpiring,
		Created: now.UTC(), Tenant: tenant, Data: data}, nil
}

// Spend is what spend.threshold says: the projected bill of a period
// reached Threshold.
type Spend struct {
	Threshold      string    `json:"threshold"`
	ProjectedTotal string    `json:"projected_total"`
	Total          string    `json:"total"`
	Currency       string    `json:"currency"`
	PeriodStart    time.Time `json:"period_start"`
	PeriodEnd      time.Time `json:"period_end"`
}

// SpendThreshold is the spend.threshold event of tenant for s, noticed at
// now. Its id depends on the tenant, the period and the threshold's
// value only ("100" and "100.00" are one threshold): it is
// billingevents.SpendThresholdID, the id of the aggregator's
// spend.threshold on billing.events for the same crossing.
func SpendThreshold(tenant string, s Spend, now time.Time) (Event, error) {
	r, ok := new(big.Rat).SetString(s.Threshold)
	if !ok {
		return Event{}, fmt.Errorf("spend threshold %q is not a decimal", s.Threshold)
	}
	s.PeriodStart, s.PeriodEnd = s.PeriodStart.UTC(), s.PeriodEnd.UTC()
	data, err := json.Marshal(s)
	if err != nil {
		return Event{}, fmt.Errorf("encoding spend.threshold of %s: %w", tenant, err)
	}
	id, err := billingevents.SpendThresholdID(tenant, s.PeriodStart, s.Threshold)
	if err != nil {
		return Event{}, err
	}
	return Event{ID: id, Type: KindSpendThreshold, Created: now.UTC(), Tenant: tenant, Data: data, Threshold: r.RatString()}, nil
}

// Reached returns the thresholds of thresholds that projected reaches
// (projected ≥ threshold), compared exactly; text that is not a decimal
// is an error.
func Reached(projected string, thresholds []string) ([]string, error) {
	p, ok := new(big.Rat).SetString(projected)
	if !ok {
		return nil, fmt.Errorf("projected total %q is not a decimal", projected)
	}
	var out []string
	for _, t := range thresholds {
		r, ok := new(big.Rat).SetString(t)
		if !ok {
			return nil, fmt.Errorf("spend threshold %q is not a decimal", t)
		}
		if p.Cmp(r) >= 0 {
			out = append(out, t)
		}
	}
	return out, nil
}
