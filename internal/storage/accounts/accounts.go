// Package accounts owns what the admin API configures: API keys, plans
// with their per-metric quotas, tenants, and meter definitions (whose
// changes are notified on MetersChannel). Callers see plain Go types.
//
// Invariant: every write is one statement or one transaction, so a reader
// never sees half a plan or a rotated key without its successor; "not
// found" is always ErrNotFound; a tenant key is stored only for a tenant
// that exists (ErrUnknownTenant otherwise, enforced by a foreign key).
package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/price"
)

// ErrNotFound is returned when a row asked for does not exist.
var ErrNotFound = errors.New("not found")

// Store reads and writes accounts.
type Store struct {
	pool *pgxpool.Pool
}

// New returns a Store on pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

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
	Limit           *int64 `json:"limit"`
	Period          string `json:"period"`
	BurstPercent    int    `json:"burst_percent"`
	Hard            bool   `json:"hard"`
	StripeEventName string `json:"stripe_event_name"`
	// Price is the quota's price in the plan's currency; nil when the
	// quota is not priced.
	Price *price.Price `json:"price,omitempty"`
	// UnitPrice is the price of one unit, a decimal string such as
	// "0.002", when Price is per_unit (its unit_amount); empty otherwise.
	// On a write, a UnitPrice without a Price is that per_unit price.
	UnitPrice string `json:"unit_price,omitempty"`
}

// Plan is a named set of quotas.
type Plan struct {
	Name string `json:"name"`
	// Currency is the ISO 4217 code of the plan's prices, lower case.
	Currency  string    `json:"currency"`
	Quotas    []Quota   `json:"quotas"`
	UpdatedAt time.Time `json:"updated_at"`
}

// PutPlan creates or replaces a plan and all its quotas in one transaction.
func (s *Store) PutPlan(ctx context.Context, p Plan) (Plan, error) {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if p.Currency == "" {
			p.Currency = "usd"
		}
		if _, err := tx.Exec(ctx, `INSERT INTO plans (name, currency) VALUES ($1, $2)
			ON CONFLICT (name) DO UPDATE SET currency = EXCLUDED.currency, updated_at = now()`, p.Name, p.Currency); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM plan_quotas WHERE plan = $1`, p.Name); err != nil {
			return err
		}
		for _, q := range p.Quotas {
			var meterName *string
			// The price as stored, and its unit_price for readers of the
			// earlier schema (per_unit only).
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
			if _, err := tx.Exec(ctx, `INSERT INTO plan_quotas
				(plan, metric, quota_limit, period, burst_percent, hard, stripe_event_name, unit_price, meter, group_filter, per_group, price)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9, $10, $11, $12::jsonb)`,
				p.Name, q.Metric, q.Limit, q.Period, q.BurstPercent, q.Hard, eventName, unitPrice, meterName, filter, q.PerGroup, priceJSON); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Plan{}, fmt.Errorf("saving plan %s: %w", p.Name, err)
	}
	return s.Plan(ctx, p.Name)
}

// Plan returns a plan with its quotas sorted by metric, then meter (the
// implicit meter's first), filter and per_group.
func (s *Store) Plan(ctx context.Context, name string) (Plan, error) {
	p := Plan{Name: name, Quotas: []Quota{}}
	err := s.pool.QueryRow(ctx, `SELECT currency, updated_at FROM plans WHERE name = $1`, name).Scan(&p.Currency, &p.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Plan{}, ErrNotFound
	}
	if err != nil {
		return Plan{}, fmt.Errorf("reading plan %s: %w", name, err)
	}
	rows, err := s.pool.Query(ctx, `SELECT metric, quota_limit, period, burst_percent, hard, coalesce(stripe_event_name, ''), price,
			coalesce(meter, metric), group_filter, per_group
		FROM plan_quotas WHERE plan = $1 ORDER BY metric, meter NULLS FIRST, group_filter::text COLLATE "C", per_group`, name)
	if err != nil {
		return Plan{}, fmt.Errorf("reading quotas of plan %s: %w", name, err)
	}
	p.Quotas, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Quota, error) {
		var q Quota
		err := r.Scan(&q.Metric, &q.Limit, &q.Period, &q.BurstPercent, &q.Hard, &q.StripeEventName, &q.Price,
			&q.Meter, &q.Filter, &q.PerGroup)
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

// ErrUnknownPlan is returned when a tenant names a plan that does not exist.
var ErrUnknownPlan = errors.New("unknown plan")

// PutTenant creates or replaces a tenant.
func (s *Store) PutTenant(ctx context.Context, t Tenant) (Tenant, error) {
	var plan, cus *string
	if t.Plan != "" {
		plan = &t.Plan
	}
	if t.StripeCustomerID != "" {
		cus = &t.StripeCustomerID
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO tenants (tenant, plan, stripe_customer_id) VALUES ($1, $2, $3)
		ON CONFLICT (tenant) DO UPDATE SET plan = EXCLUDED.plan,
			stripe_customer_id = EXCLUDED.stripe_customer_id, updated_at = now()`, t.Tenant, plan, cus)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23503" { // foreign_key_violation
		return Tenant{}, fmt.Errorf("tenant %s: %w %q", t.Tenant, ErrUnknownPlan, t.Plan)
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("saving tenant %s: %w", t.Tenant, err)
	}
	return s.Tenant(ctx, t.Tenant)
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
