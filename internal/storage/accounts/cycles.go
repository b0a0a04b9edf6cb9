package accounts

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/storage"
)

// CycleChange is one row of a tenant's billing cycle history.
type CycleChange struct {
	billingcycle.Change
	Source     string    `json:"source"`
	RecordedAt time.Time `json:"recorded_at"`
}

// TenantCycles returns tenant's billing cycle history, earliest first
// (empty: its periods are the UTC calendar months).
func TenantCycles(ctx context.Context, q storage.Executor, tenant string) ([]CycleChange, error) {
	rows, err := q.Query(ctx, `SELECT effective_from, anchor, interval, interval_count, source, recorded_at
		FROM tenant_billing_cycles WHERE tenant = $1 ORDER BY effective_from`, tenant)
	if err != nil {
		return nil, fmt.Errorf("reading the billing cycles of tenant %s: %w", tenant, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (CycleChange, error) {
		var c CycleChange
		var interval string
		err := r.Scan(&c.From, &c.Cycle.Anchor, &interval, &c.Cycle.Count, &c.Source, &c.RecordedAt)
		c.Cycle.Interval = billingcycle.Interval(interval)
		c.From, c.Cycle.Anchor, c.RecordedAt = c.From.UTC(), c.Cycle.Anchor.UTC(), c.RecordedAt.UTC()
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the billing cycles of tenant %s: %w", tenant, err)
	}
	return out, nil
}

// TenantSchedule returns tenant's billing periods as a schedule.
func TenantSchedule(ctx context.Context, q storage.Executor, tenant string) (billingcycle.Schedule, error) {
	_, s, err := TenantCycleHistory(ctx, q, tenant)
	return s, err
}

// TenantCycleHistory returns tenant's billing cycle history (as
// TenantCycles) and the schedule it makes, read once.
func TenantCycleHistory(ctx context.Context, q storage.Executor, tenant string) ([]CycleChange, billingcycle.Schedule, error) {
	hist, err := TenantCycles(ctx, q, tenant)
	if err != nil {
		return nil, billingcycle.Schedule{}, err
	}
	changes := make([]billingcycle.Change, len(hist))
	for i, h := range hist {
		changes[i] = h.Change
	}
	s, err := billingcycle.NewSchedule(changes)
	if err != nil {
		return nil, billingcycle.Schedule{}, fmt.Errorf("the billing cycles of tenant %s: %w", tenant, err)
	}
	return hist, s, nil
}

// ErrCycleTooEarly is returned for a change of billing cycle that would
// take effect earlier than billingcycle.ChangeMargin after it is recorded:
// usage at that time may already be counted in the periods in force.
var ErrCycleTooEarly = errors.New("a billing cycle change takes effect at least 10 minutes after it is recorded")

// Schedules returns the billing schedules of tenants that have a cycle,
// in one statement; a tenant missing from the answer has UTC calendar
// months.
func Schedules(ctx context.Context, q storage.Executor, tenants []string) (billingcycle.Schedules, error) {
	if len(tenants) == 0 {
		return billingcycle.Schedules{}, nil
	}
	return schedules(ctx, q, `SELECT tenant, effective_from, anchor, interval, interval_count
		FROM tenant_billing_cycles WHERE tenant = ANY($1) ORDER BY tenant, effective_from`, tenants)
}

// AllSchedules returns the billing schedule of every tenant that has a
// cycle, in one statement (the table holds a few rows per tenant).
func AllSchedules(ctx context.Context, q storage.Executor) (billingcycle.Schedules, error) {
	return schedules(ctx, q, `SELECT tenant, effective_from, anchor, interval, interval_count
		FROM tenant_billing_cycles ORDER BY tenant, effective_from`)
}

func schedules(ctx context.Context, q storage.Executor, sql string, args ...any) (billingcycle.Schedules, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("reading billing cycles: %w", err)
	}
	byTenant := map[string][]billingcycle.Change{}
	var tenant, interval string
	var ch billingcycle.Change
	_, err = pgx.ForEachRow(rows, []any{&tenant, &ch.From, &ch.Cycle.Anchor, &interval, &ch.Cycle.Count}, func() error {
		ch.Cycle.Interval = billingcycle.Interval(interval)
		byTenant[tenant] = append(byTenant[tenant], ch)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading billing cycles: %w", err)
	}
	out := make(billingcycle.Schedules, len(byTenant))
	for t, changes := range byTenant {
		s, err := billingcycle.NewSchedule(changes)
		if err != nil {
			return nil, fmt.Errorf("the billing cycles of tenant %s: %w", t, err)
		}
		out[t] = s
	}
	return out, nil
}

// SetCycle records that tenant's billing cycle is ch.Cycle from ch.From
// on, made by source ("admin" or "stripe"), and reports whether anything
// changed: a cycle whose periods are those already in force at ch.From
// records nothing. The tenant's row must exist and is locked, ordering
// two writers of its history. ch.From earlier than
// billingcycle.EarliestFrom(now) is ErrCycleTooEarly (usage of that time
// may be counted already); before the latest change, ErrEffectiveFrom
// (past periods never move); at the latest change's instant it replaces
// that change.
func SetCycle(ctx context.Context, tx storage.Executor, tenant string, ch billingcycle.Change, now time.Time, source string) (bool, error) {
	return setCycle(ctx, tx, tenant, ch, now, source, false)
}

// setCycle is SetCycle; with notBeforeLatest, a change earlier than the
// tenant's latest one is brought forward to it instead of refused.
func setCycle(ctx context.Context, tx storage.Executor, tenant string, ch billingcycle.Change, now time.Time, source string, notBeforeLatest bool) (bool, error) {
	if err := ch.Cycle.Validate(); err != nil {
		return false, err
	}
	if earliest := billingcycle.EarliestFrom(now); ch.From.Before(earliest) {
		return false, fmt.Errorf("%w: effective_from %s is before %s (now plus %s)", ErrCycleTooEarly,
			ch.From.UTC().Format(time.RFC3339Nano), earliest.Format(time.RFC3339Nano), billingcycle.ChangeMargin)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM tenants WHERE tenant = $1 FOR UPDATE`, tenant); err != nil {
		return false, fmt.Errorf("locking tenant %s: %w", tenant, err)
	}
	sched, err := TenantSchedule(ctx, tx, tenant)
	if err != nil {
		return false, err
	}
	if hist := sched.Changes(); len(hist) > 0 {
		latest := hist[len(hist)-1]
		if notBeforeLatest && ch.From.Before(latest.From) {
			ch.From = latest.From
		}
		if ch.From.Before(latest.From) {
			return false, fmt.Errorf("%w: the tenant's latest billing cycle change takes effect at %s", ErrEffectiveFrom, latest.From.Format(time.RFC3339Nano))
		}
	}
	if sched.CycleAt(ch.From).Equal(ch.Cycle) {
		return false, nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO tenant_billing_cycles (tenant, effective_from, anchor, interval, interval_count, source)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (tenant, effective_from) DO UPDATE SET anchor = excluded.anchor, interval = excluded.interval,
			interval_count = excluded.interval_count, source = excluded.source, recorded_at = now()`,
		tenant, ch.From.UTC(), ch.Cycle.Anchor.UTC(), string(ch.Cycle.Interval), ch.Cycle.Count, source); err != nil {
		return false, fmt.Errorf("recording the billing cycle of tenant %s: %w", tenant, err)
	}
	return true, nil
}

// SetCustomerCycle records ch for every tenant of Stripe customer
// customer (source "stripe") and returns how many tenants changed. ch.From
// (Stripe's period start, usually past) is brought forward to
// billingcycle.EarliestFrom(now) when it is earlier, and to a tenant's
// latest change when that is later: a cycle from Stripe takes effect
// when usage of that time cannot have been counted yet.
func SetCustomerCycle(ctx context.Context, q storage.Executor, customer string, ch billingcycle.Change, now time.Time) (int64, error) {
	rows, err := q.Query(ctx, `SELECT tenant FROM tenants WHERE stripe_customer_id = $1 ORDER BY tenant FOR UPDATE`, customer)
	if err != nil {
		return 0, fmt.Errorf("listing the tenants of customer %s: %w", customer, err)
	}
	tenants, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("listing the tenants of customer %s: %w", customer, err)
	}
	if earliest := billingcycle.EarliestFrom(now); ch.From.Before(earliest) {
		ch.From = earliest
	}
	var changed int64
	for _, t := range tenants {
		ok, err := setCycle(ctx, q, t, ch, now, "stripe", true)
		if err != nil {
			return 0, fmt.Errorf("tenant %s: %w", t, err)
		}
		if ok {
			changed++
		}
	}
	return changed, nil
}
