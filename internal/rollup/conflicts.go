package rollup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/events"
)

// Resolutions of a conflict: a resend with the (tenant, id) of a counted
// event and another payload.
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

// DefaultMaxLag is how far behind its record timestamps the aggregator
// may run and still judge event times at them (AGGREGATOR_MAX_LAG).
const DefaultMaxLag = 72 * time.Hour

// DefaultConflictAlertThreshold is CONFLICT_ALERT_THRESHOLD's default.
const DefaultConflictAlertThreshold = 10

// conflict is one conflicting resend and what became of it.
type conflict struct {
	d            *decoded
	countedHash  []byte
	countedValue int64
	resolution   string
}

// resolve decides a resend d whose payload differs from row, the counted
// event of its (tenant, id). Within the same metric and event time (so
// the same windows) the counted value becomes the maximum of the two: a
// resend can add what the first payload lacked but never take usage
// away. Any other difference would move usage to another metric or
// window (or hide it there), so it is held for a person to decide. It
// updates row on a raise and returns what to add to windows.
func resolve(row *ledgerRow, d *decoded) (conflict, increment) {
	c := conflict{d: d, countedHash: row.hash, countedValue: row.value}
	switch {
	case row.metric != d.ev.Metric || !sameInstant(row.at, d.ev.Time):
		c.resolution = ResolutionHeld
	case d.ev.Value > row.value:
		c.resolution = ResolutionRaised
		inc := increment{tenant: d.ev.Tenant, metric: d.ev.Metric, at: d.ev.Time, value: d.ev.Value - row.value}
		row.value, row.hash, row.changed = d.ev.Value, d.hash, true
		return c, inc
	default:
		c.resolution = ResolutionKept
	}
	return c, increment{}
}

// ConflictAlert is a tenant whose held and raised conflicts of one UTC
// day went beyond the threshold, raised once per tenant and day.
type ConflictAlert struct {
	Tenant    string
	Day       time.Time
	Conflicts int
}

// recordConflicts writes the batch's conflicts with their resolutions
// and raises the tenants' alerts that they push over the threshold.
func (a *Aggregator) recordConflicts(ctx context.Context, tx pgx.Tx, conflicts []conflict, now time.Time, res *Result) error {
	if len(conflicts) == 0 {
		return nil
	}
	tenants, err := a.insertConflicts(ctx, tx, conflicts, now, res)
	if err != nil || len(tenants) == 0 {
		return err
	}
	return a.raiseAlerts(ctx, tx, tenants, now, res)
}

// insertConflicts writes conflicts in one statement, counts them by
// resolution in res, logs each, and returns the tenants whose conflicts
// count towards an alert (all but those kept), once each.
func (a *Aggregator) insertConflicts(ctx context.Context, tx pgx.Tx, conflicts []conflict, now time.Time, res *Result) ([]string, error) {
	n := len(conflicts)
	ct, ci, cm, cr := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	ch, rh, rv := make([][]byte, n), make([][]byte, n), make([][]byte, n)
	cp, co, vals, cvals := make([]int32, n), make([]int64, n), make([]int64, n), make([]int64, n)
	times := make([]time.Time, n)
	alerting := map[string]bool{}
	var tenants []string
	for i, c := range conflicts {
		d := c.d
		ct[i], ci[i], cm[i], cr[i] = d.ev.Tenant, d.ev.ID, d.ev.Metric, c.resolution
		ch[i], rh[i], rv[i] = c.countedHash, d.hash, d.rec.Value
		cp[i], co[i], vals[i], cvals[i], times[i] = int32(d.rec.Partition), d.rec.Offset, d.ev.Value, c.countedValue, d.ev.Time
		switch c.resolution {
		case ResolutionRaised:
			res.Raised++
		case ResolutionKept:
			res.Kept++
		case ResolutionHeld:
			res.Held++
		}
		if c.resolution != ResolutionKept && !alerting[d.ev.Tenant] {
			alerting[d.ev.Tenant] = true
			tenants = append(tenants, d.ev.Tenant)
		}
		a.cfg.Logger.WarnContext(ctx, "duplicate id with a different payload", "resolution", c.resolution,
			"tenant", d.ev.Tenant, "id", d.ev.ID, "counted_value", c.countedValue, "value", d.ev.Value,
			"partition", d.rec.Partition, "offset", d.rec.Offset)
	}
	res.Conflicts += n
	if _, err := tx.Exec(ctx, `INSERT INTO ledger_conflicts (tenant, event_id, counted_hash, rejected_hash, rejected_event, src_partition, src_offset,
			metric, value, event_time, counted_value, resolution, detected_at)
		SELECT b.*, $13::timestamptz FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::bytea[], $6::int[], $7::bigint[],
			$8::text[], $9::bigint[], $10::timestamptz[], $11::bigint[], $12::text[]) AS b
		ON CONFLICT (src_partition, src_offset) DO NOTHING`, ct, ci, ch, rh, rv, cp, co, cm, vals, times, cvals, cr, now); err != nil {
		return nil, fmt.Errorf("recording conflicts: %w", err)
	}
	return tenants, nil
}

// raiseAlerts raises, once per tenant and day, the alert of each of
// tenants whose conflicts today exceed the threshold, adding the alerts
// raised to res.
func (a *Aggregator) raiseAlerts(ctx context.Context, tx pgx.Tx, tenants []string, now time.Time, res *Result) error {
	day := now.UTC().Truncate(24 * time.Hour)
	rows, err := tx.Query(ctx, `INSERT INTO conflict_alerts (tenant, day, conflicts, threshold)
		SELECT tenant, $2::date, count(*), $4::int FROM ledger_conflicts
		WHERE tenant = ANY($1) AND detected_at >= $3 AND detected_at < $3 + interval '1 day' AND resolution <> 'kept'
		GROUP BY tenant HAVING count(*) > $4::int
		ON CONFLICT (tenant, day) DO NOTHING
		RETURNING tenant, conflicts`, tenants, day.Format(time.DateOnly), day, a.cfg.ConflictAlertThreshold)
	if err != nil {
		return fmt.Errorf("raising conflict alerts: %w", err)
	}
	for rows.Next() {
		al := ConflictAlert{Day: day}
		if err := rows.Scan(&al.Tenant, &al.Conflicts); err != nil {
			rows.Close()
			return fmt.Errorf("raising conflict alerts: %w", err)
		}
		res.Alerts = append(res.Alerts, al)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("raising conflict alerts: %w", err)
	}
	return nil
}

// logAlerts logs each committed alert once: its row exists once per
// tenant and day, whichever replica raised it.
func (a *Aggregator) logAlerts(ctx context.Context, alerts []ConflictAlert) {
	for _, al := range alerts {
		a.cfg.Logger.ErrorContext(ctx, "tenant beyond the conflict alert threshold: resends with its event ids carry other payloads; review them with `aggregator conflicts list`",
			"tenant", al.Tenant, "day", al.Day.Format(time.DateOnly), "conflicts", al.Conflicts, "threshold", a.cfg.ConflictAlertThreshold)
	}
}

// Errors of ResolveConflict.
var (
	ErrConflictNotFound = errors.New("no such conflict")
	ErrConflictNotHeld  = errors.New("only held conflicts can be counted or dismissed")
)

// ResolveConflict marks the held conflict id counted (its event's value
// is counted in its own metric and windows, with quota evaluation and
// corrections like any counted usage) or dismissed, by actor with note,
// in one transaction. The conflict row's status is the gate: a held
// conflict is counted at most once, and an event payload once whichever
// of its held copies is counted.
//
// Counting follows the raise rule: what is counted for one (tenant, id)
// in one metric and event time is the maximum of the copies counted
// there, never their sum. The counted event is one of them when it has
// that metric and time (a conflict recorded before resolutions existed
// may), and every conflict of the id already counted with them. Counting
// adds only what the conflict's value adds over that maximum, and an
// event only if nothing was counted there yet; with the counted event's
// metric and time it raises the ledger row too, so later resends are
// judged against the maximum. The ledger row of the id and then every
// conflict row of the id, in id order, are locked first, so concurrent
// counts of copies of one event, and batches raising it, take turns.
func (a *Aggregator) ResolveConflict(ctx context.Context, id int64, resolution, actor, note string) (Conflict, error) {
	if resolution != ResolutionCounted && resolution != ResolutionDismissed {
		return Conflict{}, fmt.Errorf("a held conflict becomes %s or %s, not %q", ResolutionCounted, ResolutionDismissed, resolution)
	}
	now := a.cfg.Now().UTC()
	tx, err := a.pool.Begin(ctx)
	if err != nil {
		return Conflict{}, fmt.Errorf("beginning conflict resolution: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	set, err := lockIDConflicts(ctx, tx, id)
	if err != nil {
		return Conflict{}, err
	}
	i := slices.IndexFunc(set.cs, func(c Conflict) bool { return c.ID == id })
	if i < 0 {
		return Conflict{}, fmt.Errorf("conflict %d: %w", id, ErrConflictNotFound)
	}
	c := set.cs[i]
	if c.Resolution != ResolutionHeld {
		return c, fmt.Errorf("conflict %d is %s: %w", id, c.Resolution, ErrConflictNotHeld)
	}
	var amount, events *int64
	var inc increment
	raiseLedger := false
	if resolution == ResolutionCounted {
		if inc, raiseLedger, err = set.count(i); err != nil {
			return c, err
		}
		amount, events = &inc.value, &inc.events
	}
	tag, err := tx.Exec(ctx, `UPDATE ledger_conflicts SET resolution = $2, resolved_by = $3, resolved_at = $4, note = $5,
			metric = $6, value = $7, event_time = $8, counted_amount = $9, counted_events = $10
		WHERE id = $1 AND resolution = 'held'`, id, resolution, actor, now, note, c.Metric, c.Value, c.Time, amount, events)
	if err != nil {
		return c, fmt.Errorf("resolving conflict %d: %w", id, err)
	}
	if tag.RowsAffected() != 1 {
		return c, fmt.Errorf("conflict %d: %w", id, ErrConflictNotHeld)
	}
	c.Resolution, c.ResolvedBy, c.ResolvedAt, c.Note = resolution, actor, &now, note
	c.CountedAmount, c.CountedEvents = amount, events
	if raiseLedger {
		if err := set.raiseCounted(ctx, tx, i); err != nil {
			return c, err
		}
	}
	if inc.value > 0 || inc.events > 0 {
		if err := countIncrement(ctx, tx, inc, now); err != nil {
			return c, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return c, fmt.Errorf("committing conflict %d: %w", id, err)
	}
	a.cfg.Logger.InfoContext(ctx, "conflict resolved", "id", id, "resolution", resolution, "actor", actor, "tenant", c.Tenant, "event_id", c.EventID,
		"counted_amount", inc.value, "counted_events", inc.events)
	return c, nil
}

// idConflicts is what ResolveConflict locks for one (tenant, event id):
// its counted ledger row (nil when retention removed it) and every
// conflict row of the id in id order, with the payload hashes of those.
type idConflicts struct {
	tenant, eventID string
	counted         *ledgerRow
	cs              []Conflict
	hashes          [][]byte
}

// lockIDConflicts reads the (tenant, event id) of conflict id and locks
// its ledger row and then its conflict rows.
func lockIDConflicts(ctx context.Context, tx pgx.Tx, id int64) (idConflicts, error) {
	var set idConflicts
	err := tx.QueryRow(ctx, `SELECT tenant, event_id FROM ledger_conflicts WHERE id = $1`, id).Scan(&set.tenant, &set.eventID)
	if errors.Is(err, pgx.ErrNoRows) {
		return idConflicts{}, fmt.Errorf("conflict %d: %w", id, ErrConflictNotFound)
	}
	if err != nil {
		return idConflicts{}, fmt.Errorf("reading conflict %d: %w", id, err)
	}
	// The ledger row first, as a batch raising it locks it; it may be
	// gone (retention), so the id's conflict rows are the lock that
	// serialises counts whatever the ledger holds.
	var row ledgerRow
	err = tx.QueryRow(ctx, `SELECT payload_hash, metric, value, event_time FROM ledger WHERE tenant = $1 AND event_id = $2 FOR UPDATE`,
		set.tenant, set.eventID).Scan(&row.hash, &row.metric, &row.value, &row.at)
	switch {
	case err == nil:
		set.counted = &row
	case !errors.Is(err, pgx.ErrNoRows):
		return idConflicts{}, fmt.Errorf("locking the counted event of conflict %d: %w", id, err)
	}
	rows, err := tx.Query(ctx, conflictSelect+` WHERE tenant = $1 AND event_id = $2 ORDER BY id FOR UPDATE`, set.tenant, set.eventID)
	if err != nil {
		return idConflicts{}, fmt.Errorf("reading conflict %d: %w", id, err)
	}
	set.cs, set.hashes, err = scanConflicts(rows)
	if err != nil {
		return idConflicts{}, fmt.Errorf("reading conflict %d: %w", id, err)
	}
	return set, nil
}

// count decides what counting conflict cs[i] adds (see ResolveConflict)
// and whether it raises the ledger row; an event that cannot be read, or
// one whose payload a counted copy already carries, cannot be counted.
func (set idConflicts) count(i int) (inc increment, raiseLedger bool, err error) {
	c := set.cs[i]
	if c.Metric == "" || c.Value == nil || c.Time == nil {
		return increment{}, false, fmt.Errorf("conflict %d: its event cannot be read; dismiss it", c.ID)
	}
	for j, o := range set.cs {
		if o.Resolution == ResolutionCounted && o.ID != c.ID && string(set.hashes[j]) == string(set.hashes[i]) {
			return increment{}, false, fmt.Errorf("conflict %d carries the same event as conflict %d, already counted; dismiss it", c.ID, o.ID)
		}
	}
	inc = countedIncrement(c, set.counted, set.cs)
	counted := set.counted
	return inc, counted != nil && sameWindows(c, counted.metric, &counted.at) && *c.Value > counted.value, nil
}

// raiseCounted makes conflict cs[i] the counted event of its id, as a
// raise does: the ledger row takes its value and payload hash.
func (set idConflicts) raiseCounted(ctx context.Context, tx pgx.Tx, i int) error {
	if _, err := tx.Exec(ctx, `UPDATE ledger SET value = $3, payload_hash = $4 WHERE tenant = $1 AND event_id = $2`,
		set.tenant, set.eventID, *set.cs[i].Value, set.hashes[i]); err != nil {
		return fmt.Errorf("raising the counted event of conflict %d: %w", set.cs[i].ID, err)
	}
	return nil
}

// countIncrement adds inc to the windows like any counted usage: with
// corrections of closed periods and quota evaluation.
func countIncrement(ctx context.Context, tx pgx.Tx, inc increment, now time.Time) error {
	var res Result
	incs := []increment{inc}
	if err := addToWindows(ctx, tx, incs); err != nil {
		return err
	}
	if err := corrections(ctx, tx, incs, now, &res); err != nil {
		return err
	}
	_, err := evaluateQuotas(ctx, tx, incs, now)
	return err
}

// sameWindows reports whether metric and at are conflict c's metric and
// event time (at the database's microseconds), so the same windows.
func sameWindows(c Conflict, metric string, at *time.Time) bool {
	return at != nil && metric == c.Metric && sameInstant(*at, *c.Time)
}

// sameInstant compares event times at the database's precision
// (microseconds), so a time read back from Postgres equals the one sent.
func sameInstant(a, b time.Time) bool {
	return a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond))
}

// countedIncrement is what counting conflict c adds to its windows, given
// the counted event of its id (nil when the ledger forgot it) and every
// conflict of the id: c's value over the largest already counted in c's
// metric and event time, and an event if none was.
func countedIncrement(c Conflict, counted *ledgerRow, all []Conflict) increment {
	inc := increment{tenant: c.Tenant, metric: c.Metric, at: *c.Time, value: *c.Value, events: 1}
	var top int64
	seen := false
	if counted != nil && sameWindows(c, counted.metric, &counted.at) {
		top, seen = counted.value, true
	}
	for _, o := range all {
		if o.ID != c.ID && o.Resolution == ResolutionCounted && o.Value != nil && sameWindows(c, o.Metric, o.Time) {
			top, seen = max(top, *o.Value), true
		}
	}
	if seen {
		inc.value, inc.events = max(0, *c.Value-top), 0
	}
	return inc
}

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

const conflictSelect = `SELECT id, tenant, event_id, metric, value, event_time, counted_value, resolution, detected_at,
		coalesce(resolved_by, ''), resolved_at, note, src_partition, src_offset, rejected_event, rejected_hash,
		counted_amount, counted_events::bigint
	FROM ledger_conflicts`

func scanConflicts(rows pgx.Rows) ([]Conflict, [][]byte, error) {
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

// ConflictReader reads recorded conflicts and alerts.
type ConflictReader struct{ pool *pgxpool.Pool }

// NewConflictReader returns a ConflictReader on pool.
func NewConflictReader(pool *pgxpool.Pool) *ConflictReader { return &ConflictReader{pool: pool} }

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
	rows, err := r.pool.Query(ctx, conflictSelect+`
		WHERE ($1 = '' OR tenant = $1)
		AND ($2 = '' OR ($2 = 'resolved' AND resolution <> 'held') OR resolution = $2)
		ORDER BY id DESC LIMIT $3`, f.Tenant, status, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("listing conflicts: %w", err)
	}
	cs, _, err := scanConflicts(rows)
	if err != nil {
		return nil, fmt.Errorf("listing conflicts: %w", err)
	}
	return cs, nil
}

// Alerting reports whether tenant went beyond the conflict alert
// threshold on now's UTC day.
func (r *ConflictReader) Alerting(ctx context.Context, tenant string, now time.Time) (bool, error) {
	var alerting bool
	if err := r.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM conflict_alerts WHERE tenant = $1 AND day = $2::date)`,
		tenant, now.UTC().Format(time.DateOnly)).Scan(&alerting); err != nil {
		return false, fmt.Errorf("reading conflict alerts of %s: %w", tenant, err)
	}
	return alerting, nil
}

// Held returns how many conflicts wait for an operator.
func (r *ConflictReader) Held(ctx context.Context) (int64, error) {
	var n int64
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FROM ledger_conflicts WHERE resolution = 'held'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting held conflicts: %w", err)
	}
	return n, nil
}
