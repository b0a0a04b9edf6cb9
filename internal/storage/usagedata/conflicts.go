package usagedata

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/storage"
)

// Resolutions of a conflict (ledger_conflicts.resolution): a resend with
// the (tenant, id) of a counted event and another payload.
const (
	// ResolutionRaised: same metric and event time, larger value; the
	// counted event became the resend and the difference was counted.
	ResolutionRaised = "raised"
	// ResolutionKept: same metric and event time, value lower or equal;
	// the counted event stays, nothing to add.
	ResolutionKept = "kept"
	// ResolutionHeld: another metric or event time; nothing counted until
	// an operator counts or dismisses it.
	ResolutionHeld = "held"
	// ResolutionCounted: a held conflict whose value an operator counted
	// in its own metric and windows.
	ResolutionCounted = "counted"
	// ResolutionDismissed: a held conflict an operator left uncounted.
	ResolutionDismissed = "dismissed"
)

// Conflict is one recorded conflict, as the API and the CLI show it.
type Conflict struct {
	ID      int64  `json:"id"`
	Tenant  string `json:"tenant"`
	EventID string `json:"event_id"`
	// Metric, Value and Time are the resent event's.
	Metric string     `json:"metric,omitempty"`
	Value  *int64     `json:"value,omitempty"`
	Time   *time.Time `json:"time,omitempty"`
	// CountedValue is what the counted event of the id held when the
	// resend arrived.
	CountedValue    *int64     `json:"counted_value,omitempty"`
	Resolution      string     `json:"resolution"`
	DetectedAt      time.Time  `json:"detected_at"`
	ResolvedBy      string     `json:"resolved_by,omitempty"`
	ResolvedAt      *time.Time `json:"resolved_at,omitempty"`
	Note            string     `json:"note,omitempty"`
	SourcePartition int        `json:"source_partition"`
	SourceOffset    int64      `json:"source_offset"`
	// CountedAmount and CountedEvents are what counting the conflict
	// added to its windows (set once counted): its value over the largest
	// already counted for its id in its metric and event time, and 1 event
	// if nothing was, else 0.
	CountedAmount *int64 `json:"-"`
	CountedEvents *int64 `json:"-"`
}

// ConflictInsert is a batch's conflicts to record, as parallel columns
// (row i is element i of each): the resent event (tenant, id, metric,
// value, time, its raw bytes and payload hash, its source partition and
// offset), the counted event's hash and value, and the resolution.
type ConflictInsert struct {
	Tenants, IDs, Metrics, Resolutions []string
	CountedHashes, RejectedHashes, Raw [][]byte
	Partitions                         []int32
	Offsets, Values, CountedValues     []int64
	Times                              []time.Time
}

// InsertConflicts records the rows of b, detected at detectedAt, in one
// statement; a conflict whose source record (partition, offset) is
// recorded already is skipped, so a retried batch records it once.
func InsertConflicts(ctx context.Context, q storage.Executor, b *ConflictInsert, detectedAt time.Time) error {
	if _, err := q.Exec(ctx, `INSERT INTO ledger_conflicts (tenant, event_id, counted_hash, rejected_hash, rejected_event, src_partition, src_offset,
			metric, value, event_time, counted_value, resolution, detected_at)
		SELECT b.*, $13::timestamptz FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::bytea[], $6::int[], $7::bigint[],
			$8::text[], $9::bigint[], $10::timestamptz[], $11::bigint[], $12::text[]) AS b
		ON CONFLICT (src_partition, src_offset) DO NOTHING`,
		b.Tenants, b.IDs, b.CountedHashes, b.RejectedHashes, b.Raw, b.Partitions, b.Offsets, b.Metrics, b.Values, b.Times, b.CountedValues, b.Resolutions, detectedAt); err != nil {
		return fmt.Errorf("recording conflicts: %w", err)
	}
	return nil
}

// RaiseConflictAlerts raises the alert of each of tenants whose conflicts
// detected on day (a UTC midnight), all but those kept, are more than
// threshold, at most once per tenant and day whatever the callers, and
// calls raised with each alert it raised now.
func RaiseConflictAlerts(ctx context.Context, q storage.Executor, tenants []string, day time.Time, threshold int, raised func(tenant string, conflicts int)) error {
	rows, err := q.Query(ctx, `INSERT INTO conflict_alerts (tenant, day, conflicts, threshold)
		SELECT tenant, $2::date, count(*), $4::int FROM ledger_conflicts
		WHERE tenant = ANY($1) AND detected_at >= $3 AND detected_at < $3 + interval '1 day' AND resolution <> 'kept'
		GROUP BY tenant HAVING count(*) > $4::int
		ON CONFLICT (tenant, day) DO NOTHING
		RETURNING tenant, conflicts`, tenants, day.Format(time.DateOnly), day, threshold)
	if err != nil {
		return fmt.Errorf("raising conflict alerts: %w", err)
	}
	for rows.Next() {
		var tenant string
		var n int
		if err := rows.Scan(&tenant, &n); err != nil {
			rows.Close()
			return fmt.Errorf("raising conflict alerts: %w", err)
		}
		raised(tenant, n)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("raising conflict alerts: %w", err)
	}
	return nil
}

// ConflictKey returns the (tenant, event id) of conflict id; ok is false
// when there is no such conflict.
func ConflictKey(ctx context.Context, q storage.Executor, id int64) (tenant, eventID string, ok bool, err error) {
	err = q.QueryRow(ctx, `SELECT tenant, event_id FROM ledger_conflicts WHERE id = $1`, id).Scan(&tenant, &eventID)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", "", false, nil
	case err != nil:
		return "", "", false, fmt.Errorf("reading conflict %d: %w", id, err)
	}
	return tenant, eventID, true, nil
}

// LockConflicts reads and locks (FOR UPDATE) every conflict of tenant's
// event id, in id order, and returns them with the payload hash of each
// resent event (hashes[i] is cs[i]'s) as the ledger keeps it: its first
// LedgerHashSize bytes (conflicts recorded before the compact ledger hold
// the whole SHA-256).
func LockConflicts(ctx context.Context, q storage.Executor, tenant, eventID string) (cs []Conflict, hashes [][]byte, err error) {
	rows, err := q.Query(ctx, conflictSelect+` WHERE tenant = $1 AND event_id = $2 ORDER BY id FOR UPDATE`, tenant, eventID)
	if err != nil {
		return nil, nil, fmt.Errorf("locking the conflicts of tenant %q id %q: %w", tenant, eventID, err)
	}
	cs, hashes, err = conflictScan(rows)
	if err != nil {
		return nil, nil, fmt.Errorf("locking the conflicts of tenant %q id %q: %w", tenant, eventID, err)
	}
	return cs, hashes, nil
}

// ResolveHeldConflict stores c's resolution (Resolution, ResolvedBy,
// ResolvedAt, Note, CountedAmount, CountedEvents, and the event's Metric,
// Value and Time as read) on conflict c.ID if it is still held, and
// reports whether it was: a held conflict is resolved at most once.
func ResolveHeldConflict(ctx context.Context, q storage.Executor, c Conflict) (bool, error) {
	tag, err := q.Exec(ctx, `UPDATE ledger_conflicts SET resolution = $2, resolved_by = $3, resolved_at = $4, note = $5,
			metric = $6, value = $7, event_time = $8, counted_amount = $9, counted_events = $10
		WHERE id = $1 AND resolution = 'held'`, c.ID, c.Resolution, c.ResolvedBy, c.ResolvedAt, c.Note, c.Metric, c.Value, c.Time, c.CountedAmount, c.CountedEvents)
	if err != nil {
		return false, fmt.Errorf("resolving conflict %d: %w", c.ID, err)
	}
	return tag.RowsAffected() == 1, nil
}

const conflictSelect = `SELECT id, tenant, event_id, metric, value, event_time, counted_value, resolution, detected_at,
		coalesce(resolved_by, ''), resolved_at, note, src_partition, src_offset, rejected_event, substr(rejected_hash, 1, 8),
		counted_amount, counted_events::bigint
	FROM ledger_conflicts`

func conflictScan(rows pgx.Rows) ([]Conflict, [][]byte, error) {
	defer rows.Close()
	var out []Conflict
	var hashes [][]byte
	for rows.Next() {
		var c Conflict
		var metric *string
		var raw, hash []byte
		if err := rows.Scan(&c.ID, &c.Tenant, &c.EventID, &metric, &c.Value, &c.Time, &c.CountedValue, &c.Resolution, &c.DetectedAt,
			&c.ResolvedBy, &c.ResolvedAt, &c.Note, &c.SourcePartition, &c.SourceOffset, &raw, &hash,
			&c.CountedAmount, &c.CountedEvents); err != nil {
			return nil, nil, err
		}
		if metric != nil {
			c.Metric = *metric
		} else {
			// Recorded before resolutions: read the resent event's bytes.
			var e events.Event
			if e.UnmarshalJSON(raw) == nil && e.Tenant == c.Tenant && e.ID == c.EventID {
				t := e.Time.UTC()
				c.Metric, c.Value, c.Time = e.Metric, &e.Value, &t
			}
		}
		if c.Time != nil {
			t := c.Time.UTC()
			c.Time = &t
		}
		c.DetectedAt = c.DetectedAt.UTC()
		out = append(out, c)
		hashes = append(hashes, hash)
	}
	return out, hashes, rows.Err()
}

// ConflictFilter selects conflicts: Tenant "" means every tenant; Status
// is "" or "all", "held", "resolved" (every other), or one resolution.
type ConflictFilter struct {
	Tenant string
	Status string
	Limit  int
}

// ConflictStatuses are the values ConflictFilter.Status takes.
var ConflictStatuses = []string{"all", "held", "resolved", ResolutionRaised, ResolutionKept, ResolutionCounted, ResolutionDismissed}

// ConflictReader reads recorded conflicts and alerts, for the API, the
// CLI and the metrics.
type ConflictReader struct{ q storage.Executor }

// NewConflictReader returns a ConflictReader on q (a pool).
func NewConflictReader(q storage.Executor) *ConflictReader { return &ConflictReader{q: q} }

// List returns the conflicts f selects, newest first.
func (r *ConflictReader) List(ctx context.Context, f ConflictFilter) ([]Conflict, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Status != "" && !slices.Contains(ConflictStatuses, f.Status) {
		return nil, fmt.Errorf("status must be one of %v, got %q", ConflictStatuses, f.Status)
	}
	status := f.Status
	if status == "all" {
		status = ""
	}
	rows, err := r.q.Query(ctx, conflictSelect+`
		WHERE ($1 = '' OR tenant = $1)
		AND ($2 = '' OR ($2 = 'resolved' AND resolution <> 'held') OR resolution = $2)
		ORDER BY id DESC LIMIT $3`, f.Tenant, status, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("listing conflicts: %w", err)
	}
	cs, _, err := conflictScan(rows)
	if err != nil {
		return nil, fmt.Errorf("listing conflicts: %w", err)
	}
	return cs, nil
}

// Alerting reports whether tenant went beyond the conflict alert
// threshold on now's UTC day.
func (r *ConflictReader) Alerting(ctx context.Context, tenant string, now time.Time) (bool, error) {
	var alerting bool
	if err := r.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM conflict_alerts WHERE tenant = $1 AND day = $2::date)`,
		tenant, now.UTC().Format(time.DateOnly)).Scan(&alerting); err != nil {
		return false, fmt.Errorf("reading conflict alerts of %s: %w", tenant, err)
	}
	return alerting, nil
}

// Held returns how many conflicts wait for an operator.
func (r *ConflictReader) Held(ctx context.Context) (int64, error) {
	var n int64
	if err := r.q.QueryRow(ctx, `SELECT count(*) FROM ledger_conflicts WHERE resolution = 'held'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting held conflicts: %w", err)
	}
	return n, nil
}
