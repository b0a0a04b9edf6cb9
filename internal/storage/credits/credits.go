// Package credits owns credit_grants: a tenant's extra allowance on one
// meter's quotas, created and voided by admins. Every creation and void
// appends to audit_log (through internal/storage/auditlog) in the same
// transaction. It also owns credit_grant_expiries: the expired grants the
// biller has settled (SettleExpiry), at most one row per grant.
//
// Invariant: a grant's terms (tenant, meter, amount, times, priority,
// reason, source) never change once stored, its times are whole UTC hours
// (effective_at rounded down, expires_at rounded up), a grant is voided at
// most once, and no grant row is created or voided without its audit_log
// row committing with it (TestCreateAndVoidAreAudited,
// TestCreateIsIdempotent, TestVoidOnce).
package credits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/credit"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/auditlog"
)

// Sources are the allowed values of Grant.Source.
var Sources = []string{"promotional", "purchased", "goodwill", "refund"}

// DefaultPriority is a grant's priority when none is given.
const DefaultPriority = 10

// Grant is one credit_grants row.
type Grant struct {
	ID          string     `json:"id"`
	Tenant      string     `json:"tenant"`
	Meter       string     `json:"meter"`
	Amount      int64      `json:"amount"`
	EffectiveAt time.Time  `json:"effective_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	Priority    int        `json:"priority"`
	Reason      string     `json:"reason"`
	Source      string     `json:"source"`
	CreatedAt   time.Time  `json:"created_at"`
	CreatedBy   string     `json:"created_by"`
	VoidedAt    *time.Time `json:"voided_at"`
	VoidedBy    *string    `json:"voided_by"`
	VoidReason  *string    `json:"void_reason"`
}

// Credit returns g as the burn-down takes it.
func (g Grant) Credit() credit.Grant {
	return credit.Grant{ID: g.ID, Amount: g.Amount, EffectiveAt: g.EffectiveAt, ExpiresAt: g.ExpiresAt,
		VoidedAt: g.VoidedAt, Priority: g.Priority, CreatedAt: g.CreatedAt}
}

// sameTerms reports whether g and o grant the same thing: every field a
// client sends.
func (g Grant) sameTerms(o Grant) bool {
	eqTime := func(a, b *time.Time) bool { return (a == nil) == (b == nil) && (a == nil || a.Equal(*b)) }
	return g.Tenant == o.Tenant && g.Meter == o.Meter && g.Amount == o.Amount && g.EffectiveAt.Equal(o.EffectiveAt) &&
		eqTime(g.ExpiresAt, o.ExpiresAt) && g.Priority == o.Priority && g.Reason == o.Reason && g.Source == o.Source
}

// Errors of Create and Void.
var (
	// ErrIDConflict: a grant with this id exists with other terms.
	ErrIDConflict = errors.New("a grant with this id exists with other terms")
	// ErrNotFound: no grant of the tenant with this id.
	ErrNotFound = errors.New("no such grant")
	// ErrVoided: the grant was voided already.
	ErrVoided = errors.New("the grant is voided already")
)

// Hours rounds a grant's times as they are stored: effective down to the
// hour, expires (when set) up to the hour, both in UTC.
func Hours(effective time.Time, expires *time.Time) (time.Time, *time.Time) {
	eff := effective.UTC().Truncate(time.Hour)
	if expires == nil {
		return eff, nil
	}
	exp := expires.UTC().Truncate(time.Hour)
	if exp.Before(expires.UTC()) {
		exp = exp.Add(time.Hour)
	}
	return eff, &exp
}

type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// inTx runs fn in a transaction of q (a savepoint when q is one).
func inTx(ctx context.Context, q storage.Executor, fn func(pgx.Tx) error) error {
	b, ok := q.(beginner)
	if !ok {
		return errors.New("credit grants need an executor that can begin a transaction")
	}
	return pgx.BeginFunc(ctx, b, fn)
}

const columns = `grant_id::text, tenant, meter, amount, effective_at, expires_at, priority, reason, source, created_at, created_by, voided_at, voided_by, void_reason`

// prefixed is columns with each qualified by prefix ("g.").
func prefixed(prefix string) string {
	parts := strings.Split(columns, ", ")
	for i, p := range parts {
		parts[i] = prefix + p
	}
	return strings.Join(parts, ", ")
}

func scan(row pgx.Row) (Grant, error) {
	var g Grant
	err := row.Scan(&g.ID, &g.Tenant, &g.Meter, &g.Amount, &g.EffectiveAt, &g.ExpiresAt, &g.Priority, &g.Reason, &g.Source,
		&g.CreatedAt, &g.CreatedBy, &g.VoidedAt, &g.VoidedBy, &g.VoidReason)
	g.EffectiveAt, g.CreatedAt = g.EffectiveAt.UTC(), g.CreatedAt.UTC()
	for _, t := range []*time.Time{g.ExpiresAt, g.VoidedAt} {
		if t != nil {
			*t = t.UTC()
		}
	}
	return g, err
}

// Create stores g (its times rounded with Hours, CreatedBy the actor) and
// audits it as "grant.create" on target "grant:<id>", in one transaction
// of q. A grant with g.ID that exists already is answered as it is, with
// created false, when its terms are g's, and ErrIDConflict otherwise
// (nothing is audited then). The tenant must exist.
func Create(ctx context.Context, q storage.Executor, g Grant) (Grant, bool, error) {
	g.EffectiveAt, g.ExpiresAt = Hours(g.EffectiveAt, g.ExpiresAt)
	var saved Grant
	created := false
	err := inTx(ctx, q, func(tx pgx.Tx) error {
		var err error
		saved, err = scan(tx.QueryRow(ctx, `INSERT INTO credit_grants (grant_id, tenant, meter, amount, effective_at, expires_at, priority, reason, source, created_by)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (grant_id) DO NOTHING RETURNING `+columns,
			g.ID, g.Tenant, g.Meter, g.Amount, g.EffectiveAt, g.ExpiresAt, g.Priority, g.Reason, g.Source, g.CreatedBy))
		if errors.Is(err, pgx.ErrNoRows) {
			saved, err = scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM credit_grants WHERE grant_id = $1`, g.ID))
			if err != nil {
				return fmt.Errorf("reading grant %s: %w", g.ID, err)
			}
			if !saved.sameTerms(g) {
				return ErrIDConflict
			}
			return nil
		}
		if err != nil {
			return err
		}
		created = true
		after, err := json.Marshal(saved)
		if err != nil {
			return err
		}
		_, err = auditlog.Append(ctx, tx, auditlog.Entry{Actor: g.CreatedBy, Action: "grant.create", Target: Target(saved.ID), After: after, Note: saved.Reason})
		return err
	})
	if err != nil {
		return Grant{}, false, fmt.Errorf("creating credit grant %s: %w", g.ID, err)
	}
	return saved, created, nil
}

// Target is the audit_log target of grant id.
func Target(id string) string { return "grant:" + id }

// Void ends tenant's grant id at at, by actor, for reason, and audits it
// as "grant.void" (before and after) in one transaction of q.
// ErrNotFound when the tenant has no such grant, ErrVoided when it was
// voided already.
func Void(ctx context.Context, q storage.Executor, tenant, id, actor, reason string, at time.Time) (Grant, error) {
	var saved Grant
	err := inTx(ctx, q, func(tx pgx.Tx) error {
		before, err := scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM credit_grants WHERE grant_id = $1 AND tenant = $2 FOR UPDATE`, id, tenant))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if before.VoidedAt != nil {
			return ErrVoided
		}
		saved, err = scan(tx.QueryRow(ctx, `UPDATE credit_grants SET voided_at = $2, voided_by = $3, void_reason = $4
			WHERE grant_id = $1 RETURNING `+columns, id, at, actor, reason))
		if err != nil {
			return err
		}
		b, _ := json.Marshal(before)
		a, _ := json.Marshal(saved)
		_, err = auditlog.Append(ctx, tx, auditlog.Entry{Actor: actor, Action: "grant.void", Target: Target(id), Before: b, After: a, Note: reason})
		return err
	})
	if err != nil {
		return Grant{}, fmt.Errorf("voiding credit grant %s: %w", id, err)
	}
	return saved, nil
}

// Get returns tenant's grant id (ErrNotFound when it has none).
func Get(ctx context.Context, q storage.Executor, tenant, id string) (Grant, error) {
	g, err := scan(q.QueryRow(ctx, `SELECT `+columns+` FROM credit_grants WHERE grant_id = $1 AND tenant = $2`, id, tenant))
	if errors.Is(err, pgx.ErrNoRows) {
		return Grant{}, ErrNotFound
	}
	if err != nil {
		return Grant{}, fmt.Errorf("reading credit grant %s: %w", id, err)
	}
	return g, nil
}

func collect(rows pgx.Rows, err error, what string) ([]Grant, error) {
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	gs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Grant, error) { return scan(row) })
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return gs, nil
}

// List returns tenant's grants, by effective_at, then created_at and id.
func List(ctx context.Context, q storage.Executor, tenant string) ([]Grant, error) {
	rows, err := q.Query(ctx, `SELECT `+columns+` FROM credit_grants WHERE tenant = $1 ORDER BY effective_at, created_at, grant_id`, tenant)
	return collect(rows, err, "listing the credit grants of "+tenant)
}

// Overlapping returns the grants of tenants active at some time in
// [from, to) (voided or not), in one statement, by tenant, meter and id.
func Overlapping(ctx context.Context, q storage.Executor, tenants []string, from, to time.Time) ([]Grant, error) {
	rows, err := q.Query(ctx, `SELECT `+columns+` FROM credit_grants
		WHERE tenant = ANY($1) AND effective_at < $3 AND coalesce(least(expires_at, voided_at), 'infinity') > $2
		ORDER BY tenant, meter, grant_id`, tenants, from, to)
	return collect(rows, err, "reading credit grants")
}

// OfMeter returns tenant's grants on meter active at some time in [from, to).
func OfMeter(ctx context.Context, q storage.Executor, tenant, meter string, from, to time.Time) ([]Grant, error) {
	rows, err := q.Query(ctx, `SELECT `+columns+` FROM credit_grants
		WHERE tenant = $1 AND meter = $2 AND effective_at < $4 AND coalesce(least(expires_at, voided_at), 'infinity') > $3
		ORDER BY grant_id`, tenant, meter, from, to)
	return collect(rows, err, "reading credit grants of "+tenant+"/"+meter)
}

// Expired returns the grants that expired (not voided before expiring)
// with expires_at in [from, to), by expires_at and id.
func Expired(ctx context.Context, q storage.Executor, from, to time.Time) ([]Grant, error) {
	rows, err := q.Query(ctx, `SELECT `+columns+` FROM credit_grants
		WHERE expires_at >= $1 AND expires_at < $2 AND (voided_at IS NULL OR voided_at >= expires_at)
		ORDER BY expires_at, grant_id`, from, to)
	return collect(rows, err, "listing expired credit grants")
}
