package billingdata

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// LineagePush is a push as its lineage needs it: the pair it billed, the
// cumulative total it brought Stripe to and the snapshot that total was
// read in, and the same of the pair's previous push (Prev* empty for the
// pair's first).
type LineagePush struct {
	Identifier string    `json:"identifier"`
	Tenant     string    `json:"tenant"`
	Meter      string    `json:"meter"`
	GroupKey   string    `json:"group"`
	Period     time.Time `json:"period_start"`
	Status     string    `json:"status"`
	Delta      string    `json:"delta"`
	Cumulative string    `json:"cumulative_total"`
	// PrevIdentifier and PrevCumulative are the pair's previous push that
	// was not cancelled: the one of the greatest cumulative total below
	// this one's ("" and "0" for none).
	PrevIdentifier string `json:"previous_identifier"`
	PrevCumulative string `json:"previous_cumulative_total"`
	// Snapshot and PrevSnapshot are the pg_snapshot texts ("" when the push
	// predates lineage).
	Snapshot     string `json:"-"`
	PrevSnapshot string `json:"-"`
	// Complete is false when part of the pair's history predates lineage:
	// the push itself, an earlier push, or an event of its month counted
	// before lineage was recorded.
	Complete bool `json:"complete"`
}

// PushLineage returns the push identifier and its previous one, or
// ErrNoPush.
func PushLineage(ctx context.Context, q storage.Executor, identifier string) (LineagePush, error) {
	var p LineagePush
	var snapshot *string
	err := q.QueryRow(ctx, `SELECT p.identifier, p.tenant, p.metric, p.group_key, p.period_start, p.status, p.delta::text, p.cumulative_total::text,
			coalesce(p.metered_snapshot, (SELECT s.metered_snapshot FROM billing_pushes s WHERE s.tenant = p.tenant AND s.metric = p.metric
				AND s.group_key = p.group_key AND s.period_start = p.period_start AND s.cumulative_total = p.cumulative_total
				AND s.metered_snapshot IS NOT NULL ORDER BY s.id LIMIT 1))::text,
			coalesce(prev.identifier, ''), coalesce(prev.cumulative_total, 0)::text, coalesce(prev.metered_snapshot::text, ''),
			NOT EXISTS (SELECT 1 FROM billing_pushes o WHERE o.tenant = p.tenant AND o.metric = p.metric AND o.group_key = p.group_key
					AND o.period_start = p.period_start AND o.cumulative_total <= p.cumulative_total AND o.metered_snapshot IS NULL)
				AND NOT EXISTS (SELECT 1 FROM ledger_events l WHERE l.tenant = p.tenant AND l.metric = p.metric AND l.counted_xid IS NULL
					AND l.event_time >= p.period_start AND l.event_time < (billing_period(p.tenant, p.period_start)).period_end)
		FROM billing_pushes p
		LEFT JOIN LATERAL (SELECT b.identifier, b.cumulative_total, b.metered_snapshot FROM billing_pushes b
			WHERE b.tenant = p.tenant AND b.metric = p.metric AND b.group_key = p.group_key AND b.period_start = p.period_start
				AND b.status <> 'cancelled' AND b.cumulative_total < p.cumulative_total AND b.metered_snapshot IS NOT NULL
			ORDER BY b.cumulative_total DESC, b.id LIMIT 1) prev ON true
		WHERE p.identifier = $1`, identifier).Scan(&p.Identifier, &p.Tenant, &p.Meter, &p.GroupKey, &p.Period, &p.Status, &p.Delta, &p.Cumulative,
		&snapshot, &p.PrevIdentifier, &p.PrevCumulative, &p.PrevSnapshot, &p.Complete)
	if errors.Is(err, pgx.ErrNoRows) {
		return LineagePush{}, ErrNoPush
	}
	if err != nil {
		return LineagePush{}, fmt.Errorf("reading push %s: %w", identifier, err)
	}
	p.Period = p.Period.UTC()
	if snapshot != nil {
		p.Snapshot = *snapshot
	}
	return p, nil
}

// LineageItem is one counted event or applied adjustment a push carried.
type LineageItem struct {
	Kind      string    `json:"kind"` // "event" or "adjustment"
	ID        string    `json:"id"`
	Value     int64     `json:"value"`
	Time      time.Time `json:"time"` // the event's time; an adjustment's when it was applied
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
}

// EachPushItem calls fn, in (time, id) order, events first then
// adjustments, for every event and adjustment of p's implicit meter and
// month counted in a transaction visible in p's snapshot and not in its
// previous push's: what p carried to Stripe. Rows stream as fn consumes
// them.
func EachPushItem(ctx context.Context, q storage.Executor, p LineagePush, fn func(LineageItem) error) error {
	rows, err := q.Query(ctx, `SELECT * FROM (SELECT 'event' AS kind, event_id AS id, value, event_time AS at, src_partition, src_offset FROM ledger_events
			WHERE tenant = $1 AND metric = $2 AND event_time >= $3 AND event_time < (billing_period($1, $3)).period_end
				AND pg_visible_in_snapshot(counted_xid, $4::pg_snapshot)
				AND ($5 = '' OR NOT pg_visible_in_snapshot(counted_xid, nullif($5, '')::pg_snapshot))
				AND NOT starts_with(event_id, $6) -- an adjustment's dedup row: listed from usage_adjustments
		UNION ALL
		SELECT 'adjustment', adjustment_id, amount, recorded_at, src_partition, src_offset FROM usage_adjustments
			WHERE tenant = $1 AND meter = $2 AND group_key = '' AND period_start = $3
				AND pg_visible_in_snapshot(counted_xid, $4::pg_snapshot)
				AND ($5 = '' OR NOT pg_visible_in_snapshot(counted_xid, nullif($5, '')::pg_snapshot))
		) u ORDER BY kind DESC, at, id COLLATE "C"`, p.Tenant, p.Meter, p.Period, p.Snapshot, p.PrevSnapshot, usagedata.AdjustmentLedgerPrefix)
	if err != nil {
		return fmt.Errorf("reading the lineage of push %s: %w", p.Identifier, err)
	}
	defer rows.Close()
	var it LineageItem
	for rows.Next() {
		if err := rows.Scan(&it.Kind, &it.ID, &it.Value, &it.Time, &it.Partition, &it.Offset); err != nil {
			return fmt.Errorf("reading the lineage of push %s: %w", p.Identifier, err)
		}
		it.Time = it.Time.UTC()
		if err := fn(it); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the lineage of push %s: %w", p.Identifier, err)
	}
	return nil
}

// EventLineage is where one counted event went: its ledger row, and the
// first push of its metric's month whose snapshot saw it (nil: not pushed
// yet, or counted before lineage was recorded).
type EventLineage struct {
	Tenant    string    `json:"tenant"`
	ID        string    `json:"id"`
	Metric    string    `json:"metric"`
	Value     int64     `json:"value"`
	Time      time.Time `json:"time"`
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
	// Traced is false for an event counted before lineage was recorded.
	Traced bool `json:"traced"`
	// Push is the identifier of the push that carried it to Stripe, its
	// status and the cumulative total it brought the month to.
	Push *EventPush `json:"push"`
}

// EventPush is the push that carried an event.
type EventPush struct {
	Identifier string `json:"identifier"`
	Status     string `json:"status"`
	Cumulative string `json:"cumulative_total"`
	Delta      string `json:"delta"`
}

// ErrNoEvent is returned for an event the ledger does not hold.
var ErrNoEvent = errors.New("no counted event with this id")

// EventLineageOf returns the lineage of tenant's counted event id, or
// ErrNoEvent.
func EventLineageOf(ctx context.Context, q storage.Executor, tenant, id string) (EventLineage, error) {
	e := EventLineage{Tenant: tenant, ID: id}
	var ident, status, cumulative, delta *string
	err := q.QueryRow(ctx, `SELECT l.metric, l.value, l.event_time, l.src_partition, l.src_offset, l.counted_xid IS NOT NULL,
			p.identifier, p.status, p.cumulative_total::text, p.delta::text
		FROM (SELECT n.tenant, n.metric, l.value, l.event_time, l.src_partition::integer AS src_partition, l.src_offset, l.counted_xid
				FROM ledger l JOIN ledger_names n ON n.ref = l.ref
				WHERE l.id = ledger_key($1, $2) AND l.id_text = ledger_id_text($2) AND n.tenant = $1
			UNION ALL
			SELECT tenant, metric, value, event_time, src_partition, src_offset, counted_xid FROM ledger_overflow
				WHERE tenant = $1 AND event_id = $2) l
		LEFT JOIN LATERAL (SELECT b.identifier, b.status, b.cumulative_total, b.delta FROM billing_pushes b
			WHERE b.tenant = l.tenant AND b.metric = l.metric AND b.group_key = ''
				AND b.period_start = (billing_period(l.tenant, l.event_time)).period_start
				AND b.status <> 'cancelled' AND pg_visible_in_snapshot(l.counted_xid, b.metered_snapshot)
			ORDER BY b.cumulative_total, b.id LIMIT 1) p ON true
		WHERE NOT starts_with($2, $3)`, tenant, id, usagedata.AdjustmentLedgerPrefix).Scan(&e.Metric, &e.Value, &e.Time, &e.Partition, &e.Offset, &e.Traced,
		&ident, &status, &cumulative, &delta)
	if errors.Is(err, pgx.ErrNoRows) {
		return EventLineage{}, ErrNoEvent
	}
	if err != nil {
		return EventLineage{}, fmt.Errorf("reading the lineage of event %s of tenant %s: %w", id, tenant, err)
	}
	e.Time = e.Time.UTC()
	if ident != nil {
		e.Push = &EventPush{Identifier: *ident, Status: *status, Cumulative: *cumulative, Delta: *delta}
	}
	return e, nil
}

// EachMeterCandidate calls fn, in (partition, offset) order, for every
// event of metric that the ledger counted for p's tenant in p's billing
// period in a transaction visible in p's snapshot and, unless whole, not
// in its previous push's: the events a push of a defined meter of metric
// may have carried (whole: that counted in the period up to the push).
// Which of them the meter took depends on their properties, which the
// ledger does not keep: the caller reads them from the log at the given
// partition and offset. Rows stream as fn consumes them.
func EachMeterCandidate(ctx context.Context, q storage.Executor, p LineagePush, metric string, whole bool, fn func(LineageItem) error) error {
	prev := p.PrevSnapshot
	if whole {
		prev = ""
	}
	rows, err := q.Query(ctx, `SELECT event_id, value, event_time, src_partition, src_offset FROM ledger_events
			WHERE tenant = $1 AND metric = $2 AND event_time >= $3 AND event_time < (billing_period($1, $3)).period_end
				AND pg_visible_in_snapshot(counted_xid, $4::pg_snapshot)
				AND ($5 = '' OR NOT pg_visible_in_snapshot(counted_xid, nullif($5, '')::pg_snapshot))
				AND NOT starts_with(event_id, $6)
		ORDER BY src_partition, src_offset, event_id COLLATE "C"`, p.Tenant, metric, p.Period, p.Snapshot, prev, usagedata.AdjustmentLedgerPrefix)
	if err != nil {
		return fmt.Errorf("reading the candidate events of push %s: %w", p.Identifier, err)
	}
	defer rows.Close()
	it := LineageItem{Kind: "event"}
	for rows.Next() {
		if err := rows.Scan(&it.ID, &it.Value, &it.Time, &it.Partition, &it.Offset); err != nil {
			return fmt.Errorf("reading the candidate events of push %s: %w", p.Identifier, err)
		}
		it.Time = it.Time.UTC()
		if err := fn(it); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the candidate events of push %s: %w", p.Identifier, err)
	}
	return nil
}

// CandidateSpan is the offsets of one partition the candidates of a push
// lie at: the least and the greatest, and how many.
type CandidateSpan struct {
	Partition int32
	First     int64
	Last      int64
	Count     int64
}

// MeterCandidateSpans returns, per partition, the span of the offsets of
// the events EachMeterCandidate would list, in partition order: enough to
// tell, against the log's start, whether retention deleted any of them.
func MeterCandidateSpans(ctx context.Context, q storage.Executor, p LineagePush, metric string, whole bool) ([]CandidateSpan, error) {
	prev := p.PrevSnapshot
	if whole {
		prev = ""
	}
	rows, err := q.Query(ctx, `SELECT src_partition, min(src_offset), max(src_offset), count(*) FROM ledger_events
			WHERE tenant = $1 AND metric = $2 AND event_time >= $3 AND event_time < (billing_period($1, $3)).period_end
				AND pg_visible_in_snapshot(counted_xid, $4::pg_snapshot)
				AND ($5 = '' OR NOT pg_visible_in_snapshot(counted_xid, nullif($5, '')::pg_snapshot))
				AND NOT starts_with(event_id, $6)
		GROUP BY src_partition ORDER BY src_partition`, p.Tenant, metric, p.Period, p.Snapshot, prev, usagedata.AdjustmentLedgerPrefix)
	if err != nil {
		return nil, fmt.Errorf("reading the candidate offsets of push %s: %w", p.Identifier, err)
	}
	spans, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (CandidateSpan, error) {
		var s CandidateSpan
		err := r.Scan(&s.Partition, &s.First, &s.Last, &s.Count)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the candidate offsets of push %s: %w", p.Identifier, err)
	}
	return spans, nil
}

// EachPushAdjustment calls fn, in (applied, id) order, for every
// adjustment of p's meter, group and period counted in a transaction
// visible in p's snapshot and not in its previous push's.
func EachPushAdjustment(ctx context.Context, q storage.Executor, p LineagePush, fn func(LineageItem) error) error {
	rows, err := q.Query(ctx, `SELECT adjustment_id, amount, recorded_at, src_partition, src_offset FROM usage_adjustments
			WHERE tenant = $1 AND meter = $2 AND group_key = $3 AND period_start = $4
				AND pg_visible_in_snapshot(counted_xid, $5::pg_snapshot)
				AND ($6 = '' OR NOT pg_visible_in_snapshot(counted_xid, nullif($6, '')::pg_snapshot))
		ORDER BY recorded_at, adjustment_id COLLATE "C"`, p.Tenant, p.Meter, p.GroupKey, p.Period, p.Snapshot, p.PrevSnapshot)
	if err != nil {
		return fmt.Errorf("reading the adjustments of push %s: %w", p.Identifier, err)
	}
	defer rows.Close()
	it := LineageItem{Kind: "adjustment"}
	for rows.Next() {
		if err := rows.Scan(&it.ID, &it.Value, &it.Time, &it.Partition, &it.Offset); err != nil {
			return fmt.Errorf("reading the adjustments of push %s: %w", p.Identifier, err)
		}
		it.Time = it.Time.UTC()
		if err := fn(it); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the adjustments of push %s: %w", p.Identifier, err)
	}
	return nil
}

// MeterPushOf returns the first push of tenant's meter and group, in the
// billing period of tenant's counted event id, whose snapshot saw the
// event counted (nil: not pushed yet, or counted before lineage was
// recorded).
func MeterPushOf(ctx context.Context, q storage.Executor, tenant, id, meterName, group string) (*EventPush, error) {
	var ident, status, cumulative, delta string
	err := q.QueryRow(ctx, `SELECT b.identifier, b.status, b.cumulative_total::text, b.delta::text
		FROM (SELECT l.event_time, l.counted_xid FROM ledger l JOIN ledger_names n ON n.ref = l.ref
				WHERE l.id = ledger_key($1, $2) AND l.id_text = ledger_id_text($2) AND n.tenant = $1
			UNION ALL
			SELECT event_time, counted_xid FROM ledger_overflow WHERE tenant = $1 AND event_id = $2) l
		JOIN LATERAL (SELECT b.identifier, b.status, b.cumulative_total, b.delta FROM billing_pushes b
			WHERE b.tenant = $1 AND b.metric = $3 AND b.group_key = $4
				AND b.period_start = (billing_period($1, l.event_time)).period_start
				AND b.status <> 'cancelled' AND pg_visible_in_snapshot(l.counted_xid, b.metered_snapshot)
			ORDER BY b.cumulative_total, b.id LIMIT 1) b ON true
		LIMIT 1`, tenant, id, meterName, group).Scan(&ident, &status, &cumulative, &delta)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the push of meter %s that carried event %s of tenant %s: %w", meterName, id, tenant, err)
	}
	return &EventPush{Identifier: ident, Status: status, Cumulative: cumulative, Delta: delta}, nil
}
