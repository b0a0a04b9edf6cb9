package rollup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/storage/usagedata"
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
// event of its (tenant, id). A resend that differs only in its value (the
// counted hash is the resend's with the counted value) counts the maximum
// of the two: it can add what the first payload lacked but never take
// usage away, and its metric, time and properties put it in the same
// windows and groups of every meter. Any other difference would move
// usage to another metric, window or group (or hide it there), so it is
// held for a person to decide. It updates row on a raise and returns what
// to add to windows.
func resolve(row *ledgerRow, d *decoded) (conflict, increment) {
	c := conflict{d: d, countedHash: row.hash, countedValue: row.value}
	switch {
	case !onlyValueDiffers(row, d):
		c.resolution = usagedata.ResolutionHeld
	case d.ev.Value > row.value:
		c.resolution = usagedata.ResolutionRaised
		inc := increment{tenant: d.ev.Tenant, metric: d.ev.Metric, at: d.ev.Time, value: d.ev.Value - row.value,
			ev: &d.ev, raise: true, counted: row.recorded}
		row.value, row.hash, row.changed = d.ev.Value, d.hash, true
		return c, inc
	default:
		c.resolution = usagedata.ResolutionKept
	}
	return c, increment{}
}

// onlyValueDiffers reports whether d's event is row's counted event with
// another value: hashed with the counted value, it has the counted hash.
func onlyValueDiffers(row *ledgerRow, d *decoded) bool {
	if row.metric != d.ev.Metric || !sameInstant(row.at, d.ev.Time) {
		return false
	}
	ev := d.ev
	ev.Value = row.value
	return string(payloadHash(ev)) == string(row.hash)
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
		case usagedata.ResolutionRaised:
			res.Raised++
		case usagedata.ResolutionKept:
			res.Kept++
		case usagedata.ResolutionHeld:
			res.Held++
		}
		if c.resolution != usagedata.ResolutionKept && !alerting[d.ev.Tenant] {
			alerting[d.ev.Tenant] = true
			tenants = append(tenants, d.ev.Tenant)
		}
		a.cfg.Logger.WarnContext(ctx, "duplicate id with a different payload", "resolution", c.resolution,
			"tenant", d.ev.Tenant, "id", d.ev.ID, "counted_value", c.countedValue, "value", d.ev.Value,
			"partition", d.rec.Partition, "offset", d.rec.Offset)
	}
	res.Conflicts += n
	if err := usagedata.InsertConflicts(ctx, tx, &usagedata.ConflictInsert{
		Tenants: ct, IDs: ci, Metrics: cm, Resolutions: cr, CountedHashes: ch, RejectedHashes: rh, Raw: rv,
		Partitions: cp, Offsets: co, Values: vals, CountedValues: cvals, Times: times,
	}, now); err != nil {
		return nil, err
	}
	return tenants, nil
}

// raiseAlerts raises, once per tenant and day, the alert of each of
// tenants whose conflicts today exceed the threshold, adding the alerts
// raised to res.
func (a *Aggregator) raiseAlerts(ctx context.Context, tx pgx.Tx, tenants []string, now time.Time, res *Result) error {
	day := now.UTC().Truncate(24 * time.Hour)
	return usagedata.RaiseConflictAlerts(ctx, tx, tenants, day, a.cfg.ConflictAlertThreshold, func(tenant string, conflicts int) {
		res.Alerts = append(res.Alerts, ConflictAlert{Tenant: tenant, Day: day, Conflicts: conflicts})
	})
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
func (a *Aggregator) ResolveConflict(ctx context.Context, id int64, resolution, actor, note string) (usagedata.Conflict, error) {
	if resolution != usagedata.ResolutionCounted && resolution != usagedata.ResolutionDismissed {
		return usagedata.Conflict{}, fmt.Errorf("a held conflict becomes %s or %s, not %q", usagedata.ResolutionCounted, usagedata.ResolutionDismissed, resolution)
	}
	now := a.cfg.Now().UTC()
	tx, err := a.pool.Begin(ctx)
	if err != nil {
		return usagedata.Conflict{}, fmt.Errorf("beginning conflict resolution: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	set, err := lockIDConflicts(ctx, tx, id)
	if err != nil {
		return usagedata.Conflict{}, err
	}
	i := slices.IndexFunc(set.cs, func(c usagedata.Conflict) bool { return c.ID == id })
	if i < 0 {
		return usagedata.Conflict{}, fmt.Errorf("conflict %d: %w", id, ErrConflictNotFound)
	}
	c := set.cs[i]
	if c.Resolution != usagedata.ResolutionHeld {
		return c, fmt.Errorf("conflict %d is %s: %w", id, c.Resolution, ErrConflictNotHeld)
	}
	var amount, events *int64
	var inc increment
	raiseLedger := false
	if resolution == usagedata.ResolutionCounted {
		if inc, raiseLedger, err = set.count(i); err != nil {
			return c, err
		}
		amount, events = &inc.value, &inc.events
	}
	held, resolved := c, c
	resolved.Resolution, resolved.ResolvedBy, resolved.ResolvedAt, resolved.Note = resolution, actor, &now, note
	resolved.CountedAmount, resolved.CountedEvents = amount, events
	ok, err := usagedata.ResolveHeldConflict(ctx, tx, resolved)
	if err != nil {
		return c, err
	}
	if !ok {
		return c, fmt.Errorf("conflict %d: %w", id, ErrConflictNotHeld)
	}
	c = resolved
	if raiseLedger {
		if err := set.raiseCounted(ctx, tx, i); err != nil {
			return c, err
		}
	}
	if inc.value > 0 || inc.events > 0 {
		if err := countIncrement(ctx, tx, inc, now, a.cfg.DefaultPlan); err != nil {
			return c, err
		}
	}
	// conflict.count or conflict.dismiss commits with the resolution.
	before, err := auditlog.JSON(held)
	if err != nil {
		return c, err
	}
	after, err := auditlog.JSON(c)
	if err != nil {
		return c, err
	}
	action := map[string]string{usagedata.ResolutionCounted: "conflict.count", usagedata.ResolutionDismissed: "conflict.dismiss"}[resolution]
	if _, err := auditlog.Append(ctx, tx, auditlog.Entry{Actor: actor, Action: action, Target: fmt.Sprintf("conflict:%d", id),
		Before: before, After: after, Note: note}); err != nil {
		return c, err
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
	cs              []usagedata.Conflict
	hashes          [][]byte
}

// lockIDConflicts reads the (tenant, event id) of conflict id and locks
// its ledger row and then its conflict rows.
func lockIDConflicts(ctx context.Context, tx pgx.Tx, id int64) (idConflicts, error) {
	var set idConflicts
	var found bool
	var err error
	set.tenant, set.eventID, found, err = usagedata.ConflictKey(ctx, tx, id)
	if err != nil {
		return idConflicts{}, err
	}
	if !found {
		return idConflicts{}, fmt.Errorf("conflict %d: %w", id, ErrConflictNotFound)
	}
	// The ledger row first, as a batch raising it locks it; it may be
	// gone (retention), so the id's conflict rows are the lock that
	// serialises counts whatever the ledger holds.
	row, found, err := usagedata.LockLedgerRow(ctx, tx, set.tenant, set.eventID)
	if err != nil {
		return idConflicts{}, fmt.Errorf("locking the counted event of conflict %d: %w", id, err)
	}
	if found {
		set.counted = &ledgerRow{metric: row.Metric, at: row.At, value: row.Value, hash: row.Hash}
	}
	set.cs, set.hashes, err = usagedata.LockConflicts(ctx, tx, set.tenant, set.eventID)
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
		if o.Resolution == usagedata.ResolutionCounted && o.ID != c.ID && string(set.hashes[j]) == string(set.hashes[i]) {
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
	if err := usagedata.RaiseLedgerRow(ctx, tx, set.tenant, set.eventID, *set.cs[i].Value, set.hashes[i]); err != nil {
		return fmt.Errorf("conflict %d: %w", set.cs[i].ID, err)
	}
	return nil
}

// countIncrement adds inc to the windows like any counted usage: with
// corrections of closed periods and quota evaluation.
func countIncrement(ctx context.Context, tx pgx.Tx, inc increment, now time.Time, defaultPlan string) error {
	var res Result
	incs := []increment{inc}
	periods, err := readPeriods(ctx, tx, incs, nil)
	if err != nil {
		return err
	}
	if err := addToWindows(ctx, tx, periods, incs); err != nil {
		return err
	}
	if err := corrections(ctx, tx, periods, incs, now, &res); err != nil {
		return err
	}
	_, err = evaluateQuotas(ctx, tx, periods, incs, now, defaultPlan)
	return err
}

// sameWindows reports whether metric and at are conflict c's metric and
// event time (at the database's microseconds), so the same windows.
func sameWindows(c usagedata.Conflict, metric string, at *time.Time) bool {
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
func countedIncrement(c usagedata.Conflict, counted *ledgerRow, all []usagedata.Conflict) increment {
	inc := increment{tenant: c.Tenant, metric: c.Metric, at: *c.Time, value: *c.Value, events: 1}
	var top int64
	seen := false
	if counted != nil && sameWindows(c, counted.metric, &counted.at) {
		top, seen = counted.value, true
	}
	for _, o := range all {
		if o.ID != c.ID && o.Resolution == usagedata.ResolutionCounted && o.Value != nil && sameWindows(c, o.Metric, o.Time) {
			top, seen = max(top, *o.Value), true
		}
	}
	if seen {
		inc.value, inc.events = max(0, *c.Value-top), 0
	}
	return inc
}
