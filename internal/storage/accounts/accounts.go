// Package accounts owns what the admin API configures: API keys, plans
// as histories of versions with their per-metric quotas, tenants with
// their plan history, and meter definitions (whose changes are notified
// on MetersChannel). Callers see plain Go types. A Store made WithAudit,
// and a key written with NewKey.By, append the audit_log row of each real
// change (through internal/storage/auditlog) in the change's transaction.
//
// Invariant: every write is one statement or one transaction, so a reader
// never sees half a plan or a rotated key without its successor; "not
// found" is always ErrNotFound; a tenant key is stored only for a tenant
// that exists (ErrUnknownTenant otherwise, enforced by a foreign key); a
// plan version's quotas are never changed once written (a trigger refuses
// it), and tenants.plan is the plan of the tenant's assignment in force
// now after every assignment.
package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/auditlog"
)

// ErrNotFound is returned when a row asked for does not exist.
var ErrNotFound = errors.New("not found")

// Store reads and writes accounts.
type Store struct {
	pool *pgxpool.Pool
	// onPlanChange runs in the transaction of every real plan change
	// SetTenant records; nil runs nothing.
	onPlanChange PlanHook
	// by audits the changes of SavePlan, SetTenant and RevokeKey; the
	// zero By audits nothing.
	by auditlog.By
}

// WithAudit returns a copy of s whose SavePlan, SetTenant and RevokeKey
// append an audit_log row by by in the transaction of every real change
// (plan.put, tenant.put, key.revoke); a write that changes nothing
// appends nothing.
func (s *Store) WithAudit(by auditlog.By) *Store {
	c := *s
	c.by = by
	return &c
}

// audit appends by's audit_log row of action on target in tx, when by
// names an actor. before and after are encoded as JSON; nil is none.
func audit(ctx context.Context, tx storage.Executor, by auditlog.By, action, target string, before, after any) error {
	if !by.Audited() {
		return nil
	}
	b, err := auditlog.JSON(before)
	if err != nil {
		return err
	}
	a, err := auditlog.JSON(after)
	if err != nil {
		return err
	}
	_, err = auditlog.Append(ctx, tx, auditlog.Entry{Actor: by.Actor, Action: action, Target: target, Before: b, After: a, Note: by.Note})
	return err
}

// PlanTarget is the audit_log target of plan name.
func PlanTarget(name string) string { return "plan:" + name }

// TenantTarget is the audit_log target of tenant name (tenant.put and
// billing_cycle.put).
func TenantTarget(name string) string { return "tenant:" + name }

// KeyTarget is the audit_log target of API key id.
func KeyTarget(id string) string { return "key:" + id }

// New returns a Store on pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// WithPlanHook returns a copy of s whose SetTenant runs hook in the
// transaction of every real plan change it records, so what hook writes
// commits if and only if the change does.
func (s *Store) WithPlanHook(hook PlanHook) *Store {
	c := *s
	c.onPlanChange = hook
	return &c
}

// Ping checks that Postgres answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	return nil
}

// Quota is one limit of a plan: on a metric's implicit meter (Meter
// empty), or on a defined meter of the metric, over the groups matching
// Filter or, PerGroup, on each group. Price prices the quota's meter in
// the projected bill (per group when the quota bills per group);
// StripeEventName bills the quota's meter
// (per group, with {property} placeholders, on a defined meter), and is
// empty (stored NULL) on a quota of a defined meter that is not billed.
type Quota struct {
	Metric string `json:"metric"`
	// Meter is the defined meter of Metric the quota limits; empty for the
	// implicit meter (named as the metric), which JSON shows as the metric.
	Meter string `json:"meter"`
	// Filter holds group_by property = value pairs: the quota limits the
	// meter's usage over the groups carrying them. Never nil when read.
	Filter map[string]string `json:"filter"`
	// PerGroup sets the limit for each group of the meter, on its own.
	PerGroup bool `json:"per_group"`
	// Limit is nil for an unlimited metric.
	Limit        *int64 `json:"limit"`
	Period       string `json:"period"`
	BurstPercent int    `json:"burst_percent"`
	Hard         bool   `json:"hard"`
	// Thresholds are the warning percentages, lowest first ([80] by
	// default).
	Thresholds []int `json:"thresholds"`
	// Grace is a hard quota's grace before it blocks; nil for none.
	Grace           *Grace `json:"grace,omitempty"`
	StripeEventName string `json:"stripe_event_name"`
	// Price is the quota's price in the plan's currency; nil when the
	// quota is not priced.
	Price *price.Price `json:"price,omitempty"`
	// UnitPrice is the price of one unit, a decimal string such as
	// "0.002", when Price is per_unit (its unit_amount); empty otherwise.
	// On a write, a UnitPrice without a Price is that per_unit price.
	UnitPrice string `json:"unit_price,omitempty"`
	// OveragePrice prices the usage beyond the quota's allowance in the
	// projected bill; nil when the quota has none. Part of a version's
	// content, as Price is.
	OveragePrice *price.Price `json:"overage_price,omitempty"`
}

// Plan is one version of a named set of quotas.
type Plan struct {
	Name string `json:"name"`
	// Currency is the ISO 4217 code of the plan's prices, lower case.
	Currency string  `json:"currency"`
	Quotas   []Quota `json:"quotas"`
	// Version numbers the plan's versions from 1; EffectiveFrom is when
	// it takes effect (nil: since always, a plan defined before plans had
	// versions); Proration how a change to it applies to a period under
	// way; Scheduled that it takes effect in the future.
	Version       int        `json:"version"`
	EffectiveFrom *time.Time `json:"effective_from"`
	Proration     string     `json:"proration"`
	Scheduled     bool       `json:"scheduled"`
	UpdatedAt     time.Time  `json:"updated_at"`
	// HoldOnAnomaly, when set, holds a push whose delta is beyond Factor
	// times its baseline for an operator's approval (internal/stripesync);
	// nil (the default) never holds.
	HoldOnAnomaly *HoldOnAnomaly `json:"hold_on_anomaly,omitempty"`
	// SpendThresholds are amounts in Currency ("100.00") the projected
	// bill of a billing period is watched for: each one it reaches is
	// recorded and announced once per period (spend.threshold on
	// billing.events). Strictly increasing, each > 0; empty (the default)
	// for none. Part of a version's content (see CheckSpendThresholds).
	SpendThresholds []string `json:"spend_thresholds"`
}

// MaxSpendThresholds bounds a plan version's SpendThresholds.
const MaxSpendThresholds = 10

// CheckSpendThresholds reports what is wrong with a plan version's spend
// thresholds: at most MaxSpendThresholds, each a decimal amount as prices
// are written (price.ValidDecimal: at most 12 integer digits and 12
// decimals) greater than zero, in strictly increasing order.
func CheckSpendThresholds(ts []string) error {
	if len(ts) > MaxSpendThresholds {
		return fmt.Errorf("spend_thresholds: at most %d thresholds, got %d", MaxSpendThresholds, len(ts))
	}
	var prev *big.Rat
	for i, t := range ts {
		if !price.ValidDecimal(t) {
			return fmt.Errorf("spend_thresholds[%d]: %q is no amount: write a decimal string such as \"100.00\", with at most %d decimals", i, t, price.MaxDecimals)
		}
		r, _ := new(big.Rat).SetString(t)
		if r.Sign() <= 0 {
			return fmt.Errorf("spend_thresholds[%d]: %q must be greater than 0", i, t)
		}
		if prev != nil && r.Cmp(prev) <= 0 {
			return fmt.Errorf("spend_thresholds[%d]: %q must be greater than the threshold before it, %q (list them in increasing order, once each)", i, t, ts[i-1])
		}
		prev = r
	}
	return nil
}

// HoldOnAnomaly is a plan version's hold of unusual pushes: a push whose
// delta is more than Factor (a positive decimal, exact) times the median
// delta of the last Window (default 20) pushes of its tenant, meter and
// group is held until approved or rejected.
type HoldOnAnomaly struct {
	Factor json.Number `json:"factor"`
	Window int         `json:"window,omitempty"`
}

// MaxHoldWindow bounds HoldOnAnomaly.Window.
const MaxHoldWindow = 1000

// Check reports what is wrong with h: Factor must be a decimal number
// from MinHoldFactor to MaxHoldFactor (an exponent, if any, of at most
// 1000 in magnitude, so reading it exactly stays cheap), Window from 0
// (the default, 20) to MaxHoldWindow.
func (h HoldOnAnomaly) Check() error {
	if _, err := h.Rat(); err != nil {
		return err
	}
	if h.Window < 0 || h.Window > MaxHoldWindow {
		return fmt.Errorf("hold_on_anomaly.window must be from 1 to %d pushes (0 or absent: 20), got %d", MaxHoldWindow, h.Window)
	}
	return nil
}

// Bounds of HoldOnAnomaly.Factor.
const (
	MinHoldFactor = 0.001
	MaxHoldFactor = 1e6
)

// Rat is h's factor, exact, or an error when Check would refuse it.
func (h HoldOnAnomaly) Rat() (*big.Rat, error) {
	s := string(h.Factor)
	bad := fmt.Errorf("hold_on_anomaly.factor must be a number from %g to %g, such as 10 or 2.5, got %q", MinHoldFactor, MaxHoldFactor, s)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < MinHoldFactor || f > MaxHoldFactor {
		return nil, bad
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		if e, err := strconv.Atoi(s[i+1:]); err != nil || e < -1000 || e > 1000 {
			return nil, bad
		}
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok || r.Sign() <= 0 {
		return nil, bad
	}
	return r, nil
}

// Always is the time a version or an assignment in force since always
// takes effect from (stored as -infinity): the zero time.
var Always time.Time

// ErrEffectiveFrom is returned for a plan version or a plan assignment
// that would take effect before the latest one already recorded.
var ErrEffectiveFrom = errors.New("effective time not after the latest change")

// errUnchanged rolls back a version identical to the latest.
var errUnchanged = errors.New("unchanged")

// PutPlan is SavePlan at the present time, answering the version saved
// (or the latest, unchanged).
func (s *Store) PutPlan(ctx context.Context, p Plan) (Plan, error) {
	saved, _, err := s.SavePlan(ctx, p, time.Now())
	return saved, err
}

// SavePlan records p as a new version of its plan, effective from
// p.EffectiveFrom (nil: now), unless its quotas, currency and proration
// equal those of the plan's latest version: then nothing is written and
// it returns that version with created false. A new version must take
// effect after the latest version does (ErrEffectiveFrom otherwise); it
// may take effect in the future (Scheduled). A version's quotas are never
// changed afterwards. A Store WithAudit audits a new version as plan.put
// (before: the latest version, null for a new plan; after: the new one).
func (s *Store) SavePlan(ctx context.Context, p Plan, now time.Time) (Plan, bool, error) {
	if p.Currency == "" {
		p.Currency = "usd"
	}
	if p.Proration == "" {
		p.Proration = "immediate"
	}
	at := now.Truncate(time.Microsecond) // Postgres's precision
	if p.EffectiveFrom != nil {
		at = p.EffectiveFrom.Truncate(time.Microsecond)
	}
	var saved Plan
	created := true
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The plan's row is the lock that orders two writers of its versions.
		if _, err := tx.Exec(ctx, `INSERT INTO plans (name, currency) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`, p.Name, p.Currency); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT 1 FROM plans WHERE name = $1 FOR UPDATE`, p.Name); err != nil {
			return err
		}
		var latest int
		var latestFrom pgtype.Timestamptz
		err := tx.QueryRow(ctx, `SELECT version, effective_from FROM plan_versions WHERE plan = $1 ORDER BY version DESC LIMIT 1`, p.Name).Scan(&latest, &latestFrom)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if latest > 0 && p.EffectiveFrom == nil && latestFrom.InfinityModifier == pgtype.Finite &&
			!latestFrom.Time.After(now) && !at.After(latestFrom.Time) {
			// Now, but after the latest version, made within the same microsecond.
			at = latestFrom.Time.Add(time.Microsecond)
		}
		if latest > 0 && latestFrom.InfinityModifier != pgtype.NegativeInfinity && !at.After(latestFrom.Time) {
			return fmt.Errorf("%w: version %d of plan %s takes effect at %s", ErrEffectiveFrom, latest, p.Name, latestFrom.Time.UTC().Format(time.RFC3339Nano))
		}
		if latest == 0 && p.EffectiveFrom == nil {
			at = Always // a plan's first version, at no given time, is its content since always
		}
		var hold []byte
		if p.HoldOnAnomaly != nil {
			if hold, err = json.Marshal(p.HoldOnAnomaly); err != nil {
				return fmt.Errorf("hold_on_anomaly: %w", err)
			}
		}
		spend := p.SpendThresholds
		if spend == nil {
			spend = []string{}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO plan_versions (plan, version, effective_from, proration, currency, hold_on_anomaly, spend_thresholds)
			VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)`,
			p.Name, latest+1, timestamptz(at), p.Proration, p.Currency, hold, spend); err != nil {
			return err
		}
		for _, q := range p.Quotas {
			if err := insertQuota(ctx, tx, p.Name, latest+1, q); err != nil {
				return err
			}
		}
		if saved, err = readVersion(ctx, tx, p.Name, latest+1, now); err != nil {
			return err
		}
		var before any
		if latest > 0 {
			prev, err := readVersion(ctx, tx, p.Name, latest, now)
			if err != nil {
				return err
			}
			if sameContent(prev, saved) {
				saved, created = prev, false
				return errUnchanged
			}
			before = prev
		}
		if err := audit(ctx, tx, s.by, "plan.put", PlanTarget(p.Name), before, saved); err != nil {
			return err
		}
		// plans.currency is the currency of the version in force now.
		_, err = tx.Exec(ctx, `UPDATE plans SET currency = coalesce((SELECT currency FROM plan_versions
				WHERE plan = $1 AND effective_from <= $2 ORDER BY effective_from DESC LIMIT 1), currency), updated_at = now()
			WHERE name = $1`, p.Name, now)
		return err
	})
	if errors.Is(err, ErrEffectiveFrom) {
		return Plan{}, false, err
	}
	if err != nil && !errors.Is(err, errUnchanged) {
		return Plan{}, false, fmt.Errorf("saving plan %s: %w", p.Name, err)
	}
	return saved, created, nil
}

// sameContent reports whether two versions hold the same quotas,
// currency, proration, hold and spend thresholds.
func sameContent(a, b Plan) bool {
	return a.Currency == b.Currency && a.Proration == b.Proration && reflect.DeepEqual(a.Quotas, b.Quotas) &&
		reflect.DeepEqual(a.HoldOnAnomaly, b.HoldOnAnomaly) && slices.Equal(a.SpendThresholds, b.SpendThresholds)
}

// insertQuota writes one quota of a version.
func insertQuota(ctx context.Context, tx pgx.Tx, plan string, version int, q Quota) error {
	var meterName *string
	// The price as stored, and its unit_price for readers of the earlier
	// schema (per_unit only).
	var priceJSON []byte
	var unitPrice *string
	pr := q.Price
	if pr == nil && q.UnitPrice != "" {
		per := price.PerUnitPrice(q.UnitPrice)
		pr = &per
	}
	if pr != nil {
		var err error
		if priceJSON, err = json.Marshal(pr); err != nil {
			return fmt.Errorf("quota on %s: %w", q.Metric, err)
		}
		if u := pr.UnitPrice(); u != "" {
			unitPrice = &u
		}
	}
	var overageJSON []byte
	if q.OveragePrice != nil {
		var err error
		if overageJSON, err = json.Marshal(q.OveragePrice); err != nil {
			return fmt.Errorf("quota on %s: overage price: %w", q.Metric, err)
		}
	}
	if q.Meter != "" && q.Meter != q.Metric {
		meterName = &q.Meter
	}
	var eventName *string // NULL: a quota on a defined meter that is not billed
	if q.StripeEventName != "" {
		eventName = &q.StripeEventName
	}
	filter := q.Filter
	if filter == nil {
		filter = map[string]string{}
	}
	thresholds := q.Thresholds
	if len(thresholds) == 0 {
		thresholds = quota.DefaultThresholds
	}
	var graceMS, graceAmount *int64
	if q.Grace != nil {
		graceAmount = q.Grace.Amount
		if d, err := time.ParseDuration(q.Grace.Duration); err == nil && d > 0 {
			ms := d.Milliseconds()
			graceMS = &ms
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO plan_quotas
		(plan, version, metric, quota_limit, period, burst_percent, hard, stripe_event_name, unit_price, meter, group_filter, per_group, price, overage_price,
			thresholds, grace_ms, grace_amount)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::numeric, $10, $11, $12, $13::jsonb, $14::jsonb, $15, $16, $17)`,
		plan, version, q.Metric, q.Limit, q.Period, q.BurstPercent, q.Hard, eventName, unitPrice, meterName, filter, q.PerGroup, priceJSON, overageJSON,
		thresholds, graceMS, graceAmount)
	return err
}

// readVersion reads one version of a plan with its quotas sorted by
// metric, then meter (the implicit meter's first), filter and per_group.
func readVersion(ctx context.Context, q storage.Executor, name string, version int, now time.Time) (Plan, error) {
	p := Plan{Name: name, Version: version, Quotas: []Quota{}}
	var from pgtype.Timestamptz
	var hold []byte
	err := q.QueryRow(ctx, `SELECT v.currency, v.proration, v.effective_from, greatest(v.created_at, p.updated_at), v.hold_on_anomaly, v.spend_thresholds
		FROM plan_versions v JOIN plans p ON p.name = v.plan WHERE v.plan = $1 AND v.version = $2`, name, version).
		Scan(&p.Currency, &p.Proration, &from, &p.UpdatedAt, &hold, &p.SpendThresholds)
	if errors.Is(err, pgx.ErrNoRows) {
		return Plan{}, ErrNotFound
	}
	if err != nil {
		return Plan{}, fmt.Errorf("reading plan %s version %d: %w", name, version, err)
	}
	if p.SpendThresholds == nil {
		p.SpendThresholds = []string{}
	}
	if from.InfinityModifier == pgtype.Finite {
		t := from.Time.UTC()
		p.EffectiveFrom, p.Scheduled = &t, t.After(now)
	}
	if hold != nil {
		p.HoldOnAnomaly = new(HoldOnAnomaly)
		if err := json.Unmarshal(hold, p.HoldOnAnomaly); err != nil {
			return Plan{}, fmt.Errorf("reading hold_on_anomaly of plan %s version %d: %w", name, version, err)
		}
	}
	rows, err := q.Query(ctx, `SELECT metric, quota_limit, period, burst_percent, hard, coalesce(stripe_event_name, ''), price,
			coalesce(meter, metric), group_filter, per_group, overage_price, thresholds, grace_ms, grace_amount
		FROM plan_quotas WHERE plan = $1 AND version = $2 ORDER BY metric, meter NULLS FIRST, group_filter::text COLLATE "C", per_group`, name, version)
	if err != nil {
		return Plan{}, fmt.Errorf("reading quotas of plan %s: %w", name, err)
	}
	p.Quotas, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Quota, error) {
		var q Quota
		var graceMS, graceAmount *int64
		err := r.Scan(&q.Metric, &q.Limit, &q.Period, &q.BurstPercent, &q.Hard, &q.StripeEventName, &q.Price,
			&q.Meter, &q.Filter, &q.PerGroup, &q.OveragePrice, &q.Thresholds, &graceMS, &graceAmount)
		if graceMS != nil || graceAmount != nil {
			q.Grace = &Grace{Amount: graceAmount}
			if graceMS != nil {
				q.Grace.Duration = (time.Duration(*graceMS) * time.Millisecond).String()
			}
		}
		if q.Filter == nil {
			q.Filter = map[string]string{}
		}
		if q.Price != nil {
			q.UnitPrice = q.Price.UnitPrice()
		}
		return q, err
	})
	if err != nil {
		return Plan{}, fmt.Errorf("reading quotas of plan %s: %w", name, err)
	}
	return p, nil
}

// Plan returns the version of a plan in force at the present time (see
// PlanAt).
func (s *Store) Plan(ctx context.Context, name string) (Plan, error) {
	return s.PlanAt(ctx, name, time.Now())
}

// PlanAt returns the version of a plan in force at now (the first version
// to come, when none is yet).
func (s *Store) PlanAt(ctx context.Context, name string, now time.Time) (Plan, error) {
	var version int
	err := s.pool.QueryRow(ctx, `SELECT version FROM plan_versions WHERE plan = $1
		ORDER BY effective_from <= $2 DESC, CASE WHEN effective_from <= $2 THEN effective_from END DESC, effective_from LIMIT 1`, name, now).Scan(&version)
	if errors.Is(err, pgx.ErrNoRows) {
		return Plan{}, ErrNotFound
	}
	if err != nil {
		return Plan{}, fmt.Errorf("reading plan %s: %w", name, err)
	}
	return readVersion(ctx, s.pool, name, version, now)
}

// PlanVersions returns every version of a plan, oldest first.
func (s *Store) PlanVersions(ctx context.Context, name string, now time.Time) ([]Plan, error) {
	rows, err := s.pool.Query(ctx, `SELECT version FROM plan_versions WHERE plan = $1 ORDER BY version`, name)
	if err != nil {
		return nil, fmt.Errorf("listing versions of plan %s: %w", name, err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return nil, fmt.Errorf("listing versions of plan %s: %w", name, err)
	}
	if len(versions) == 0 {
		return nil, ErrNotFound
	}
	out := make([]Plan, len(versions))
	for i, v := range versions {
		if out[i], err = readVersion(ctx, s.pool, name, v, now); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// LookupMeter returns the defined meter name (GetMeter on the store's
// pool), or ErrNotFound: what a plan's quota on that meter is checked
// against.
func (s *Store) LookupMeter(ctx context.Context, name string) (Meter, error) {
	return GetMeter(ctx, s.pool, name)
}

// ListPlans returns the names of all plans.
func (s *Store) ListPlans(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT name FROM plans ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing plans: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("listing plans: %w", err)
	}
	return names, nil
}

// Tenant is a customer and its billing mapping.
type Tenant struct {
	Tenant           string    `json:"tenant"`
	Plan             string    `json:"plan"`
	StripeCustomerID string    `json:"stripe_customer_id"`
	UpdatedAt        time.Time `json:"updated_at"`
}

// TenantChange is a tenant as tenant.put audits it: its plan in force
// (after a change: the new plan, and when it took effect, null for since
// always) and its Stripe customer.
type TenantChange struct {
	Tenant            string     `json:"tenant"`
	Plan              string     `json:"plan"`
	StripeCustomerID  string     `json:"stripe_customer_id"`
	PlanEffectiveFrom *time.Time `json:"plan_effective_from,omitempty"`
}

// tenantForUpdate reads tenant in tx, locking its row (nil: no tenant).
func tenantForUpdate(ctx context.Context, tx storage.Executor, tenant string) (*TenantChange, error) {
	t := TenantChange{Tenant: tenant}
	err := tx.QueryRow(ctx, `SELECT coalesce(plan, ''), coalesce(stripe_customer_id, '') FROM tenants WHERE tenant = $1 FOR UPDATE`,
		tenant).Scan(&t.Plan, &t.StripeCustomerID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading tenant %s: %w", tenant, err)
	}
	return &t, nil
}

// ErrUnknownPlan is returned when a tenant names a plan that does not exist.
var ErrUnknownPlan = errors.New("unknown plan")

// PutTenant is SetTenant effective at the present time.
func (s *Store) PutTenant(ctx context.Context, t Tenant) (Tenant, error) {
	return s.SetTenant(ctx, t, time.Time{}, time.Now())
}

// SetTenant creates or replaces a tenant and assigns it t.Plan from
// effective (zero: now) on, with source "admin": the open assignment is
// closed at effective and, unless t.Plan is empty (no assignment: the
// default plan applies), a new one opens. An unchanged plan records
// nothing. effective must not be before the start of the open assignment
// (or the end of the latest closed one), nor after now (ErrEffectiveFrom);
// equal to it, the open assignment, which never took effect, is replaced.
// A Store WithAudit audits a new tenant, a new Stripe customer or a real
// plan change as tenant.put (before and after: TenantChange).
func (s *Store) SetTenant(ctx context.Context, t Tenant, effective, now time.Time) (Tenant, error) {
	var cus *string
	if t.StripeCustomerID != "" {
		cus = &t.StripeCustomerID
	}
	var plan *string
	if t.Plan != "" {
		plan = &t.Plan
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := tenantForUpdate(ctx, tx, t.Tenant)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO tenants (tenant, stripe_customer_id) VALUES ($1, $2)
			ON CONFLICT (tenant) DO UPDATE SET stripe_customer_id = EXCLUDED.stripe_customer_id, updated_at = now()`, t.Tenant, cus); err != nil {
			return err
		}
		at := effective
		if at.IsZero() {
			at = now
			// A tenant's first plan, at no given time, covers its whole
			// past: it had none before (as before plans had versions).
			hist, err := TenantPlans(ctx, tx, t.Tenant)
			if err != nil {
				return err
			}
			if len(hist) == 0 {
				at = Always
			}
		}
		var change *PlanChange
		hook := func(ctx context.Context, tx storage.Executor, c PlanChange) error {
			change = &c
			if s.onPlanChange == nil {
				return nil
			}
			return s.onPlanChange(ctx, tx, c)
		}
		if err := AssignPlan(ctx, tx, t.Tenant, plan, at, now, "admin", hook); err != nil {
			return err
		}
		after, err := tenantForUpdate(ctx, tx, t.Tenant)
		if err != nil {
			return err
		}
		if before != nil && change == nil && before.StripeCustomerID == after.StripeCustomerID {
			return nil // nothing changed
		}
		if change != nil && !change.At.IsZero() {
			at := change.At.UTC()
			after.PlanEffectiveFrom = &at
		}
		var b any
		if before != nil {
			b = before
		}
		return audit(ctx, tx, s.by, "tenant.put", TenantTarget(t.Tenant), b, after)
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23503" { // foreign_key_violation
		return Tenant{}, fmt.Errorf("tenant %s: %w %q", t.Tenant, ErrUnknownPlan, t.Plan)
	}
	if errors.Is(err, ErrEffectiveFrom) {
		return Tenant{}, err
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("saving tenant %s: %w", t.Tenant, err)
	}
	return s.Tenant(ctx, t.Tenant)
}

// AssignPlan moves tenant to plan (nil: no assignment, the default plan
// applies) from at on, recording source ("admin", "stripe"), and keeps
// tenants.plan the plan in force at now. The tenant's row must exist and
// is locked, ordering two writers of its history. An unchanged plan
// records nothing; at before the latest change, or after now, is
// ErrEffectiveFrom; at equal to the open assignment's start replaces it.
// A real change runs hook (when not nil) on tx after recording it; its
// error undoes nothing by itself: the caller rolls tx back.
func AssignPlan(ctx context.Context, tx storage.Executor, tenant string, plan *string, at, now time.Time, source string, hook PlanHook) error {
	if at.After(now) {
		return fmt.Errorf("%w: %s is in the future; a plan assignment takes effect now or in the past", ErrEffectiveFrom, at.UTC().Format(time.RFC3339Nano))
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM tenants WHERE tenant = $1 FOR UPDATE`, tenant); err != nil {
		return err
	}
	latest, open, err := latestAssignment(ctx, tx, tenant)
	if err != nil {
		return err
	}
	unchanged := (open != nil && equalPlan(open.Plan, plan)) || (open == nil && plan == nil)
	if !unchanged && latest != nil && at.Before(latest.boundary()) {
		return fmt.Errorf("%w: the tenant's latest plan change takes effect at %s", ErrEffectiveFrom, latest.boundary().UTC().Format(time.RFC3339Nano))
	}
	// Unchanged, nothing is recorded; tenants.plan is made to agree all the same.
	if !unchanged && open != nil {
		if at.Equal(open.from()) {
			if _, err := tx.Exec(ctx, `DELETE FROM tenant_plans WHERE tenant = $1 AND valid_to IS NULL`, tenant); err != nil {
				return err
			}
		} else if _, err := tx.Exec(ctx, `UPDATE tenant_plans SET valid_to = $2 WHERE tenant = $1 AND valid_to IS NULL`, tenant, timestamptz(at)); err != nil {
			return err
		}
	}
	if plan != nil && !unchanged {
		if _, err := tx.Exec(ctx, `INSERT INTO tenant_plans (tenant, plan, valid_from, source) VALUES ($1, $2, $3, $4)`, tenant, *plan, timestamptz(at), source); err != nil {
			return err
		}
	}
	// The plan in force now: the new one (at is never after now).
	if _, err = tx.Exec(ctx, `UPDATE tenants SET plan = $2, updated_at = now() WHERE tenant = $1`, tenant, plan); err != nil {
		return err
	}
	if unchanged {
		return nil
	}
	var from *string
	if open != nil {
		from = open.Plan
	}
	change := PlanChange{Tenant: tenant, From: from, To: plan, At: at, Now: now, Source: source}
	if plan != nil {
		// The version of the new plan in force at the change (0: none yet,
		// its first version is scheduled later).
		var v *int32
		if err := tx.QueryRow(ctx, `SELECT plan_version_at($1, $2)`, *plan, timestamptz(at)).Scan(&v); err != nil {
			return fmt.Errorf("reading the version of plan %s at the change: %w", *plan, err)
		}
		if v != nil {
			change.Version = int(*v)
		}
	}
	return planChanged(ctx, tx, change, hook)
}

// PlanChange is one change of a tenant's plan: From (nil: none) to To
// (nil: none, the default plan applies) from At (the zero time: since
// always) on, made by Source at Now; Version is To's version in force at
// At (0 when To is nil or has none in force then).
type PlanChange struct {
	Tenant   string
	From, To *string
	Version  int
	At, Now  time.Time
	Source   string
}

// PlanHook is given every real plan change inside the transaction that
// records it (tx), so that what it writes (a billing event in the
// outbox) commits if and only if the change does. Storage packages take
// it from their caller: they import no domain package.
type PlanHook func(ctx context.Context, tx storage.Executor, c PlanChange) error

// planChanged runs hook, when set, on the change recorded in tx.
func planChanged(ctx context.Context, tx storage.Executor, c PlanChange, hook PlanHook) error {
	if hook == nil {
		return nil
	}
	if err := hook(ctx, tx, c); err != nil {
		return fmt.Errorf("after the plan change of tenant %s: %w", c.Tenant, err)
	}
	return nil
}

// timestamptz is t for Postgres: Always is -infinity.
func timestamptz(t time.Time) pgtype.Timestamptz {
	if t.IsZero() {
		return pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
	}
	return pgtype.Timestamptz{Time: t, Valid: true}
}

func equalPlan(a, b *string) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

// Assignment is one entry of a tenant's plan history: Plan (nil: an
// explicit "no plan", unlimited) over [ValidFrom, ValidTo); ValidFrom nil
// is since always, ValidTo nil is open.
type Assignment struct {
	Plan      *string    `json:"plan"`
	ValidFrom *time.Time `json:"valid_from"`
	ValidTo   *time.Time `json:"valid_to"`
	Source    string     `json:"source"`
	CreatedAt time.Time  `json:"created_at"`
}

func (a *Assignment) from() time.Time {
	if a.ValidFrom == nil {
		return time.Time{}
	}
	return *a.ValidFrom
}

// boundary is the earliest time a later change may take effect.
func (a *Assignment) boundary() time.Time {
	if a.ValidTo != nil {
		return *a.ValidTo
	}
	return a.from()
}

// latestAssignment returns tenant's latest assignment and, when it is
// open, that one again as open.
func latestAssignment(ctx context.Context, q storage.Executor, tenant string) (latest, open *Assignment, err error) {
	hist, err := TenantPlans(ctx, q, tenant)
	if err != nil || len(hist) == 0 {
		return nil, nil, err
	}
	latest = &hist[len(hist)-1]
	if latest.ValidTo == nil {
		open = latest
	}
	return latest, open, nil
}

// TenantPlans returns tenant's plan history, oldest first (empty for a
// tenant never assigned a plan, or unknown).
func TenantPlans(ctx context.Context, q storage.Executor, tenant string) ([]Assignment, error) {
	rows, err := q.Query(ctx, `SELECT plan, valid_from, valid_to, source, created_at FROM tenant_plans WHERE tenant = $1 ORDER BY valid_from`, tenant)
	if err != nil {
		return nil, fmt.Errorf("reading the plans of tenant %s: %w", tenant, err)
	}
	hist, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Assignment, error) {
		var a Assignment
		var from, to pgtype.Timestamptz
		if err := r.Scan(&a.Plan, &from, &to, &a.Source, &a.CreatedAt); err != nil {
			return a, err
		}
		if from.InfinityModifier == pgtype.Finite {
			t := from.Time.UTC()
			a.ValidFrom = &t
		}
		if to.Valid {
			t := to.Time.UTC()
			a.ValidTo = &t
		}
		a.CreatedAt = a.CreatedAt.UTC()
		return a, nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the plans of tenant %s: %w", tenant, err)
	}
	return hist, nil
}

// TenantPlans returns tenant's plan history (see the function), or
// ErrNotFound for an unknown tenant.
func (s *Store) TenantPlans(ctx context.Context, tenant string) ([]Assignment, error) {
	if _, err := s.Tenant(ctx, tenant); err != nil {
		return nil, err
	}
	return TenantPlans(ctx, s.pool, tenant)
}

// Tenant returns one tenant.
func (s *Store) Tenant(ctx context.Context, tenant string) (Tenant, error) {
	t := Tenant{Tenant: tenant}
	err := s.pool.QueryRow(ctx, `SELECT coalesce(plan, ''), coalesce(stripe_customer_id, ''), updated_at
		FROM tenants WHERE tenant = $1`, tenant).Scan(&t.Plan, &t.StripeCustomerID, &t.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Tenant{}, ErrNotFound
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("reading tenant %s: %w", tenant, err)
	}
	return t, nil
}

// ListTenants returns all tenants sorted by name.
func (s *Store) ListTenants(ctx context.Context) ([]Tenant, error) {
	rows, err := s.pool.Query(ctx, `SELECT tenant, coalesce(plan, ''), coalesce(stripe_customer_id, ''), updated_at
		FROM tenants ORDER BY tenant`)
	if err != nil {
		return nil, fmt.Errorf("listing tenants: %w", err)
	}
	ts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Tenant, error) {
		var t Tenant
		err := r.Scan(&t.Tenant, &t.Plan, &t.StripeCustomerID, &t.UpdatedAt)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing tenants: %w", err)
	}
	return ts, nil
}

// Grace is a hard quota's grace before it blocks, as the plan API writes
// it: {"duration":"24h"} and/or {"amount":500} (units of the meter).
type Grace struct {
	// Duration is a Go duration from the period's first exceeded
	// crossing; empty for none.
	Duration string `json:"duration,omitempty"`
	// Amount is how far past the limit usage may go; nil for none.
	Amount *int64 `json:"amount,omitempty"`
}

// Check reports what is wrong with g: a duration that does not parse or
// is not positive (at most 366 days, whole milliseconds), a negative
// amount, or neither given.
func (g Grace) Check() error {
	if g.Duration == "" && g.Amount == nil {
		return errors.New(`give "duration" (such as "24h") and/or "amount" (units past the limit)`)
	}
	if g.Duration != "" {
		d, err := time.ParseDuration(g.Duration)
		if err != nil || d < time.Millisecond || d > 366*24*time.Hour {
			return fmt.Errorf("duration must be a duration from 1ms to 8784h, such as \"24h\", got %q", g.Duration)
		}
	}
	if g.Amount != nil && *g.Amount < 0 {
		return fmt.Errorf("amount must be ≥ 0, got %d", *g.Amount)
	}
	return nil
}
