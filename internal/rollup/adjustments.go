package rollup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/meterset"
	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// Adjustments travel on usage.events as records of their own kind: the
// header HeaderKind = KindAdjustment and a JSON Adjustment as value. A
// record without that header is an event, decoded as before.
const (
	// HeaderKind names a record's kind; absent on events.
	HeaderKind = "kind"
	// KindAdjustment is the kind of an adjustment record.
	KindAdjustment = "adjustment"
	// KindEvent is the kind of every other record (no kind header, or
	// another value): one usage event, decoded as such.
	KindEvent = "event"
	// maxAdjustmentBytes bounds an adjustment record's value.
	maxAdjustmentBytes = 64 << 10
	// maxAdjustmentText bounds reason and reference, in bytes.
	maxAdjustmentText = 1024
	// adjustmentLedgerPrefix starts the ledger id of an adjustment (see
	// usagedata.AdjustmentLedgerPrefix).
	adjustmentLedgerPrefix = usagedata.AdjustmentLedgerPrefix
)

// Adjustment is a signed change, recorded by finance, of one meter's
// month window for one group of a tenant.
type Adjustment struct {
	// ID is a UUID, the adjustment's idempotency key.
	ID     string `json:"id"`
	Tenant string `json:"tenant"`
	// Meter is a sum or count meter, or a metric (its implicit meter).
	Meter string `json:"meter"`
	// Group names exactly the meter's group_by properties ({} for none).
	Group map[string]string `json:"group"`
	// Period is the month, "YYYY-MM" (UTC).
	Period string `json:"period"`
	// Amount is the signed change, never 0.
	Amount    int64  `json:"amount"`
	Reason    string `json:"reason"`
	Reference string `json:"reference"`
}

// PeriodStart is the first instant of the adjustment's month.
func (a Adjustment) PeriodStart() (time.Time, error) {
	t, err := time.Parse("2006-01", a.Period)
	if err != nil || t.Format("2006-01") != a.Period {
		return time.Time{}, fmt.Errorf("period %q: want a month as YYYY-MM", a.Period)
	}
	return t.UTC(), nil
}

// Validate checks the fields that need no meter definition.
func (a Adjustment) Validate() error {
	if _, err := uuid.Parse(a.ID); err != nil || len(a.ID) != 36 {
		return fmt.Errorf("id %q: want a UUID", a.ID)
	}
	if !events.ValidName(a.Tenant) {
		return fmt.Errorf("tenant %q is not a valid tenant name", a.Tenant)
	}
	if !events.ValidName(a.Meter) {
		return fmt.Errorf("meter %q is not a valid meter name", a.Meter)
	}
	if _, err := a.PeriodStart(); err != nil {
		return err
	}
	if a.Amount == 0 {
		return fmt.Errorf("amount must not be 0")
	}
	for name, v := range map[string]string{"reason": a.Reason, "reference": a.Reference} {
		if len(v) > maxAdjustmentText || !utf8.ValidString(v) || Sanitize(v) != v {
			return fmt.Errorf("%s: at most %d bytes of UTF-8 text without control characters", name, maxAdjustmentText)
		}
	}
	for k, v := range a.Group {
		if !utf8.ValidString(k) || !utf8.ValidString(v) || Sanitize(k) != k || Sanitize(v) != v {
			return fmt.Errorf("group: property %q: want UTF-8 text without control characters", Sanitize(k))
		}
	}
	return nil
}

// Resolve returns the definition of the adjustment's meter in meters: a
// defined meter (defined true), or else the implicit meter of the metric
// so named.
func (a Adjustment) Resolve(meters *meterset.Set) (d meter.Definition, defined bool) {
	if meters != nil {
		if m, ok := meters.Named(a.Meter); ok {
			return m.Definition, true
		}
	}
	return meter.Implicit(a.Meter), false
}

// GroupKey checks the adjustment's group against d and returns its key.
func (a Adjustment) GroupKey(d meter.Definition) (string, error) {
	if d.Aggregation != meter.Sum && d.Aggregation != meter.Count {
		return "", fmt.Errorf("meter %q is a %s meter; only sum and count meters can be adjusted", d.Name, d.Aggregation)
	}
	want := slices.Clone(d.GroupBy)
	got := slices.Collect(maps.Keys(a.Group))
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(want, got) {
		return "", fmt.Errorf("group names %q; meter %q groups by %q", got, d.Name, d.GroupBy)
	}
	return d.Group(events.Event{Properties: a.Group}).Key(), nil
}

// Record is the usage.events record that carries a.
func (a Adjustment) Record() (Record, error) {
	v, err := json.Marshal(a)
	if err != nil {
		return Record{}, fmt.Errorf("encoding adjustment %s: %w", a.ID, err)
	}
	return Record{Topic: topics.UsageEvents, Key: []byte(a.Tenant), Value: v,
		Headers: []Header{{Key: HeaderKind, Value: []byte(KindAdjustment)}}}, nil
}

// SignedRecord is a.Record() signed with keys' signing key at the time
// at: the record ingest writes.
func (a Adjustment) SignedRecord(keys *recordsign.Keyring, at time.Time) (Record, error) {
	rec, err := a.Record()
	if err != nil {
		return Record{}, err
	}
	if err := keys.Sign(&rec, KindAdjustment, at); err != nil {
		return Record{}, fmt.Errorf("signing adjustment %s: %w", a.ID, err)
	}
	return rec, nil
}

// DecodeAdjustment reads an adjustment record's value (checked without
// recursion first) and validates it.
func DecodeAdjustment(value []byte) (Adjustment, error) {
	var a Adjustment
	if err := httpjson.DecodeBytes(value, maxAdjustmentBytes, &a); err != nil {
		return Adjustment{}, fmt.Errorf("adjustment: %w", err)
	}
	if a.Group == nil {
		a.Group = map[string]string{}
	}
	if err := a.Validate(); err != nil {
		return Adjustment{}, fmt.Errorf("adjustment %s: %w", Sanitize(a.ID), err)
	}
	return a, nil
}

// isAdjustment reports whether rec carries an adjustment.
func isAdjustment(rec Record) bool { return recordKind(rec.Headers) == KindAdjustment }

// recordKind is the kind of a record with headers hs: KindAdjustment when
// its first kind header says adjustment, else KindEvent.
func recordKind(hs []Header) string {
	for _, h := range hs {
		if h.Key == HeaderKind {
			if bytes.Equal(h.Value, []byte(KindAdjustment)) {
				return KindAdjustment
			}
			return KindEvent
		}
	}
	return KindEvent
}

// adjRecord is one adjustment record of a batch.
type adjRecord struct {
	rec Record
	adj Adjustment
	err string // non-empty: a dead letter of class
	// class is ClassUnverified or ClassUndecodable when err is set.
	class string
}

// VerifyAdjustment checks rec's signature against policy: nil when the
// record may be applied, else the reason (without any secret) it may not.
func VerifyAdjustment(policy recordsign.Policy, rec Record) error {
	err := policy.Check(rec, KindAdjustment)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, recordsign.ErrNoKeys):
		return fmt.Errorf("adjustment signature: this aggregator has no ADJUSTMENT_SIGNING_KEYS to verify it with; configure them and replay")
	case errors.Is(err, recordsign.ErrUnsigned):
		return fmt.Errorf("adjustment signature: the record is not signed (only ingest's POST /v1/admin/adjustments writes adjustments)")
	default:
		return fmt.Errorf("adjustment signature: %w", err)
	}
}

// decodeAll decodes recs: events into the batch, adjustment records apart.
func (a *Aggregator) decodeAll(recs []Record, now time.Time) ([]decoded, []adjRecord) {
	batch := make([]decoded, 0, len(recs))
	var adjs []adjRecord
	for _, rec := range recs {
		if isAdjustment(rec) {
			ar := adjRecord{rec: rec}
			// The signature first: an unverified record is never decoded
			// further, let alone applied.
			if err := VerifyAdjustment(a.cfg.AdjustmentSignatures, rec); err != nil {
				ar.err, ar.class = Sanitize(err.Error()), ClassUnverified
			} else if adj, err := DecodeAdjustment(rec.Value); err != nil {
				ar.err, ar.class = Sanitize(err.Error()), ClassUndecodable
			} else {
				ar.adj = adj
			}
			adjs = append(adjs, ar)
			continue
		}
		batch = append(batch, a.decode(rec, now))
	}
	return batch, adjs
}

// applyAdjustments applies the batch's adjustments in offset order, after
// its events were added to windows. Each changes its meter's month window
// (hour and day windows are left as they are), is recorded in
// usage_adjustments and the ledger (under its own id space, so a resent
// adjustment counts once), and queues adjustment.recorded. The window must
// stay non-negative as it stood at the adjustment's place in the log (the
// batch's increments from later offsets do not count for it), so a replay
// in other batches reaches the same verdict; an adjustment that would make
// it negative, names an unknown meter or a meter neither sum nor count
// becomes a dead letter with the reason. It returns the increments that
// quotas must look at again: one per increase.
func (a *Aggregator) applyAdjustments(ctx context.Context, tx pgx.Tx, meters *meterset.Set, periods billingcycle.Schedules, adjs []adjRecord, incs []increment, now time.Time, res *Result) ([]increment, error) {
	if len(adjs) == 0 {
		return nil, nil
	}
	var dead []decoded
	var out []increment
	for _, ar := range adjs {
		if ar.err != "" {
			dead = append(dead, decoded{rec: ar.rec, class: ar.class, err: ar.err})
			continue
		}
		inc, reason, err := a.applyAdjustment(ctx, tx, meters, periods.Of(ar.adj.Tenant), ar, incs, now, res)
		if err != nil {
			return nil, err
		}
		if reason != "" {
			dead = append(dead, decoded{rec: ar.rec, ev: events.Event{Tenant: ar.adj.Tenant}, class: ClassInvalid, err: Sanitize(reason)})
			continue
		}
		if inc != nil {
			out = append(out, *inc)
		}
	}
	if err := a.deadLetters(ctx, tx, dead, now, res); err != nil {
		return nil, err
	}
	return out, nil
}

// applyAdjustment applies one adjustment to the tenant's billing period
// its month names (sched.InMonth: the period in force at the month's last
// instant); a non-empty reason makes it a dead letter instead.
func (a *Aggregator) applyAdjustment(ctx context.Context, tx pgx.Tx, meters *meterset.Set, sched billingcycle.Schedule, ar adjRecord, incs []increment, now time.Time, res *Result) (*increment, string, error) {
	adj := ar.adj
	ledgerID := adjustmentLedgerPrefix + adj.ID
	seen := false
	if err := usagedata.ReadLedger(ctx, tx, []string{adj.Tenant}, []string{ledgerID}, false, func(string, string, usagedata.LedgerRow) { seen = true }); err != nil {
		return nil, "", err
	}
	if seen {
		res.Duplicates++
		return nil, "", nil
	}
	d, defined := adj.Resolve(meters)
	key, err := adj.GroupKey(d)
	if err != nil {
		return nil, err.Error(), nil
	}
	month, _ := adj.PeriodStart()
	start, end := sched.InMonth(month)
	value, exists, err := usagedata.LockMonthWindow(ctx, tx, adj.Tenant, d.Name, key, start)
	if err != nil {
		return nil, "", err
	}
	if !exists {
		known := defined
		if !known {
			if known, err = usagedata.MeterHasUsage(ctx, tx, adj.Tenant, d.Name); err != nil {
				return nil, "", err
			}
		}
		if !known {
			return nil, fmt.Sprintf("meter %q: tenant %q has no usage of it and no meter of that name is defined", adj.Meter, adj.Tenant), nil
		}
	}
	// The window as it stood at the adjustment's offset: without what the
	// batch's later records added to it.
	later := laterContribution(d, key, adj.Tenant, sched, start, ar.rec.Offset, incs)
	after := new(big.Int).Sub(value, later)
	after.Add(after, big.NewInt(adj.Amount))
	if after.Sign() < 0 {
		return nil, fmt.Sprintf("amount %d would make the %s month window of meter %q negative (it holds %s at this adjustment)",
			adj.Amount, adj.Period, d.Name, new(big.Int).Sub(value, later)), nil
	}
	hash := sha256.Sum256(ar.rec.Value)
	if err := usagedata.InsertLedger(ctx, tx, &usagedata.LedgerInsert{
		Tenants: []string{adj.Tenant}, IDs: []string{ledgerID}, Metrics: []string{d.Name}, Hashes: [][]byte{hash[:]},
		Values: []int64{adj.Amount}, Times: []time.Time{now}, Partitions: []int32{int32(ar.rec.Partition)}, Offsets: []int64{ar.rec.Offset},
	}, func(string, string) {}); err != nil {
		return nil, "", err
	}
	fresh, err := usagedata.RecordAdjustment(ctx, tx, usagedata.Adjustment{
		Tenant: adj.Tenant, ID: adj.ID, Meter: d.Name, GroupKey: key, PeriodStart: start, Amount: adj.Amount,
		Reason: adj.Reason, Reference: adj.Reference, Partition: int32(ar.rec.Partition), Offset: ar.rec.Offset,
	})
	if err != nil {
		return nil, "", err
	}
	if !fresh {
		// Recorded before the ledger forgot its id: still counted once.
		res.Duplicates++
		return nil, "", nil
	}
	ev, err := billingevents.New(adj.Tenant, now, billingevents.AdjustmentRecorded{
		AdjustmentID: adj.ID, Period: adj.Period, Amount: billingevents.Amount(strconv.FormatInt(adj.Amount, 10)),
		Unit: "usage", Meter: d.Name, Group: key, Reason: adj.Reason,
	})
	if err != nil {
		return nil, "", err
	}
	if err := billingevents.Enqueue(ctx, tx, ev); err != nil {
		return nil, "", err
	}
	res.Adjusted++
	if adj.Amount < 0 {
		return nil, "", nil
	}
	// Quotas look at the month again: an event standing for the group
	// (and the meter's filter), with no value to add.
	props := maps.Clone(adj.Group)
	if props == nil {
		props = map[string]string{}
	}
	maps.Copy(props, d.Filter)
	at := end.Add(-time.Microsecond)
	if at.After(now) {
		at = now
	}
	ev2 := events.Event{ID: ledgerID, Tenant: adj.Tenant, Metric: d.Metric, Time: at, Properties: props}
	return &increment{tenant: adj.Tenant, metric: d.Metric, at: at, ev: &ev2, offset: ar.rec.Offset}, "", nil
}

// laterContribution is what incs from records after offset added to the
// month window (d, key) of tenant (whose billing periods are sched)
// starting at start.
func laterContribution(d meter.Definition, key, tenant string, sched billingcycle.Schedule, start time.Time, offset int64, incs []increment) *big.Int {
	sum := new(big.Int)
	var buf []byte
	for i := range incs {
		in := &incs[i]
		if in.offset <= offset || in.tenant != tenant || in.metric != d.Metric || !windows.Month.StartIn(sched, in.at).Equal(start) {
			continue
		}
		if d.IsImplicit() && d.Name == d.Metric {
			sum.Add(sum, big.NewInt(in.value))
			continue
		}
		if in.ev == nil || !d.Matches(*in.ev) {
			continue
		}
		buf = d.Group(*in.ev).AppendKey(buf[:0])
		if string(buf) != key {
			continue
		}
		switch d.Aggregation {
		case meter.Sum:
			sum.Add(sum, big.NewInt(in.value))
		case meter.Count:
			sum.Add(sum, big.NewInt(in.events))
		}
	}
	return sum
}
