package ingest

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/credit"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/storage/credits"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// grantRoutes are the admin routes of credit grants and the audit log.
func (a *API) grantRoutes() []Route {
	return []Route{
		{"GET", "/v1/admin/tenants/{tenant}/grants", a.gate.Admin(a.listGrants)},
		{"POST", "/v1/admin/tenants/{tenant}/grants", a.gate.Admin(a.createGrant)},
		{"POST", "/v1/admin/tenants/{tenant}/grants/{id}/void", a.gate.Admin(a.voidGrant)},
		{"GET", "/v1/admin/grants/expired", a.gate.Admin(a.expiredGrants)},
		{"GET", "/v1/admin/audit", a.gate.Operator(a.listAudit)},
	}
}

// grantBody is the body of POST /v1/admin/tenants/{tenant}/grants.
type grantBody struct {
	// ID is nil when the body leaves it out (one is made); sent, it must
	// be a UUID, an empty one too.
	ID          *string    `json:"id"`
	Meter       string     `json:"meter"`
	Amount      int64      `json:"amount"`
	EffectiveAt *time.Time `json:"effective_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	Priority    *int32     `json:"priority"`
	Reason      string     `json:"reason"`
	Source      string     `json:"source"`
}

// fieldError is one refused field of a request body.
type fieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// writeFieldErrors answers 400 code with every refused field listed.
func writeFieldErrors(w http.ResponseWriter, code, what string, errs []fieldError) {
	parts := make([]string, len(errs))
	for i, e := range errs {
		parts[i] = e.Field + ": " + e.Message
	}
	httpjson.Write(w, http.StatusBadRequest, struct {
		Error  httpjson.ErrorDetail `json:"error"`
		Errors []fieldError         `json:"errors"`
	}{httpjson.ErrorDetail{Code: code, Message: what + ": " + strings.Join(parts, "; ")}, errs})
}

// tenantExists answers 400 or 404 and returns false unless the path's
// tenant exists.
func (a *API) tenantExists(w http.ResponseWriter, r *http.Request) (string, bool) {
	tenant := r.PathValue("tenant")
	if !validName(tenant) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", tenantNameRule)
		return "", false
	}
	_, err := a.opt.Store.Tenant(r.Context(), tenant)
	if errors.Is(err, accounts.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "unknown_tenant", "no tenant %q; create it first with PUT /v1/admin/tenants/%s", tenant, tenant)
		return "", false
	}
	if err != nil {
		a.internalError(w, r, err)
		return "", false
	}
	return tenant, true
}

// grantMeterError says why grants may not name meter ("" when they may):
// a defined sum or count meter, or a metric (its implicit meter) that a
// plan quotes or whose usage was counted.
func (a *API) grantMeterError(ctx context.Context, name string) (string, error) {
	m, err := accounts.GetMeter(ctx, a.opt.DB, name)
	if err == nil {
		if !credit.AppliesTo(m.Aggregation) {
			return fmt.Sprintf("meter %q aggregates by %s; grants apply only to sum and count meters", name, m.Aggregation), nil
		}
		return "", nil
	}
	if !errors.Is(err, accounts.ErrNotFound) {
		return "", err
	}
	plans, err := accounts.PlansQuotingMetric(ctx, a.opt.DB, name)
	if err != nil || len(plans) > 0 {
		return "", err
	}
	counted, err := usagedata.ImplicitMeterCounted(ctx, a.opt.DB, name)
	if err != nil || counted {
		return "", err
	}
	return fmt.Sprintf("no meter %q: name a meter defined with PUT /v1/admin/meters/{meter}, or a metric a plan quotes or that has counted usage", name), nil
}

// grantFromBody checks b and returns the grant it asks for.
func (a *API) grantFromBody(ctx context.Context, tenant string, b grantBody, actor string, now time.Time) (credits.Grant, []fieldError, error) {
	var errs []fieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, fieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	g := credits.Grant{Tenant: tenant, Meter: b.Meter, Amount: b.Amount, Priority: credits.DefaultPriority,
		Reason: b.Reason, Source: b.Source, CreatedBy: actor, EffectiveAt: now, ExpiresAt: b.ExpiresAt}
	if b.ID != nil {
		g.ID = *b.ID
	}
	if b.ID == nil {
		id, err := uuid.NewV7()
		if err != nil {
			return g, nil, err
		}
		g.ID = id.String()
	} else if u, err := uuid.Parse(g.ID); err != nil || len(g.ID) != 36 {
		add("id", "must be a UUID such as 0193a5c2-7d3e-7b2a-9f1e-3c4d5e6f7a8b")
	} else {
		g.ID = u.String()
	}
	if b.Meter == "" {
		add("meter", "is required")
	} else if !validName(b.Meter) {
		add("meter", `must be a meter or metric name: 1-128 characters of A-Z a-z 0-9 . _ : -`)
	} else if msg, err := a.grantMeterError(ctx, b.Meter); err != nil {
		return g, nil, err
	} else if msg != "" {
		add("meter", "%s", msg)
	}
	if b.Amount <= 0 {
		add("amount", "must be a positive integer, got %d", b.Amount)
	}
	if b.EffectiveAt != nil {
		g.EffectiveAt = *b.EffectiveAt
	}
	if b.ExpiresAt != nil && !b.ExpiresAt.After(g.EffectiveAt) {
		add("expires_at", "must be after effective_at (%s), got %s", g.EffectiveAt.UTC().Format(time.RFC3339), b.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if b.Priority != nil {
		g.Priority = int(*b.Priority)
	}
	if strings.TrimSpace(b.Reason) == "" {
		add("reason", "is required: say why the grant is given")
	} else if utf8.RuneCountInString(b.Reason) > 1024 || strings.ContainsFunc(b.Reason, isControl) {
		add("reason", "must be at most 1024 characters, without control characters")
	}
	if !slices.Contains(credits.Sources, b.Source) {
		add("source", "must be one of %s, got %q", strings.Join(credits.Sources, ", "), b.Source)
	}
	return g, errs, nil
}

// storableText reports whether Postgres can hold s as text: valid UTF-8
// without NUL.
func storableText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

func isControl(r rune) bool { return r < 0x20 || (r >= 0x7f && r <= 0x9f) }

// createGrant serves POST /v1/admin/tenants/{tenant}/grants: 201 with the
// grant; with a client id already used, 200 with the stored grant when the
// body is the same and 409 otherwise.
func (a *API) createGrant(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	tenant, ok := a.tenantExists(w, r)
	if !ok {
		return
	}
	var body grantBody
	if _, err := decodeObjectWithoutNulls(r, &body, "expires_at"); err != nil {
		writeBodyError(w, err)
		return
	}
	now := a.opt.Now()
	if body.ID != nil && len(*body.ID) == 36 && uuid.Validate(*body.ID) == nil && body.EffectiveAt == nil {
		// A retry that left effective_at to the server means the time the
		// grant was first made, not the time of the retry.
		if prev, err := credits.Get(r.Context(), a.opt.DB, tenant, *body.ID); err == nil {
			now = prev.EffectiveAt
		} else if !errors.Is(err, credits.ErrNotFound) {
			a.internalError(w, r, err)
			return
		}
	}
	g, errs, err := a.grantFromBody(r.Context(), tenant, body, auditlog.KeyActor(p.KeyID), now)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if len(errs) > 0 {
		writeFieldErrors(w, "invalid_grant", "invalid grant", errs)
		return
	}
	var saved credits.Grant
	var created bool
	err = a.inTx(r.Context(), func(tx pgx.Tx) error {
		var err error
		if saved, created, err = credits.Create(r.Context(), tx, g); err != nil || !created {
			return err
		}
		// grant.created commits with the grant, or not at all.
		ev, err := billingevents.New(saved.Tenant, saved.CreatedAt, billingevents.GrantCreated{GrantID: saved.ID,
			Amount: billingevents.Amount(strconv.FormatInt(saved.Amount, 10)), Unit: billingevents.UnitMeterUnits, Meter: saved.Meter,
			EffectiveAt: saved.EffectiveAt, ExpiresAt: saved.ExpiresAt})
		if err != nil {
			return err
		}
		return billingevents.Enqueue(r.Context(), tx, ev)
	})
	if errors.Is(err, credits.ErrIDConflict) {
		httpjson.Errorf(w, http.StatusConflict, "id_conflict", "grant %s exists with other terms; a retry must send the same body, a new grant a new id", g.ID)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		a.opt.Logger.InfoContext(r.Context(), "credit grant created", "grant", saved.ID, "tenant", tenant, "meter", saved.Meter, "amount", saved.Amount, "by", p.KeyID)
	}
	httpjson.Write(w, status, saved)
}

// grantState is a grant in GET /v1/admin/tenants/{tenant}/grants.
type grantState struct {
	credits.Grant
	Status    string   `json:"status"`
	Burnt     *big.Int `json:"burnt"`
	Remaining *big.Int `json:"remaining"`
}

// status names where g stands at now.
func status(g credits.Grant, now time.Time) string {
	switch {
	case g.VoidedAt != nil && !g.VoidedAt.After(now):
		return "voided"
	case g.ExpiresAt != nil && !g.ExpiresAt.After(now):
		return "expired"
	case g.EffectiveAt.After(now):
		return "scheduled"
	}
	return "active"
}

// listGrants serves GET /v1/admin/tenants/{tenant}/grants: every grant of
// the tenant with its status and what it burnt and has left in the
// current period of the first quota on its meter.
func (a *API) listGrants(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	tenant, ok := a.tenantExists(w, r)
	if !ok {
		return
	}
	ctx, now := r.Context(), a.opt.Now()
	gs, err := credits.List(ctx, a.opt.DB, tenant)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	out := make([]grantState, len(gs))
	for i, g := range gs {
		s := grantState{Grant: g, Status: status(g, now), Burnt: new(big.Int), Remaining: new(big.Int)}
		if s.Status == "active" || s.Status == "scheduled" {
			s.Remaining.SetInt64(g.Amount)
		}
		burn, found, err := a.opt.Usage.GrantBurn(ctx, g, now, now)
		if err != nil {
			a.internalError(w, r, err)
			return
		}
		if found {
			s.Burnt, s.Remaining = burn.Burnt, burn.Remaining
		}
		out[i] = s
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenant": tenant, "grants": out})
}

// voidGrant serves POST /v1/admin/tenants/{tenant}/grants/{id}/void.
func (a *API) voidGrant(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	tenant, ok := a.tenantExists(w, r)
	if !ok {
		return
	}
	var body struct {
		Reason string `json:"reason"`
	}
	if err := decodeObject(r, &body); err != nil {
		writeBodyError(w, err)
		return
	}
	if strings.TrimSpace(body.Reason) == "" || utf8.RuneCountInString(body.Reason) > 1024 || strings.ContainsFunc(body.Reason, isControl) {
		writeFieldErrors(w, "invalid_request", "invalid void", []fieldError{{Field: "reason", Message: "is required: at most 1024 characters, without control characters"}})
		return
	}
	id := r.PathValue("id")
	err := credits.ErrNotFound // grant ids are UUIDs: no other text names one
	var g credits.Grant
	if u, perr := uuid.Parse(id); perr == nil && len(id) == 36 {
		err = a.inTx(r.Context(), func(tx pgx.Tx) error {
			var err error
			if g, err = credits.Void(r.Context(), tx, tenant, u.String(), auditlog.KeyActor(p.KeyID), body.Reason, a.opt.Now()); err != nil {
				return err
			}
			// grant.voided commits with the void, or not at all.
			remaining, err := a.remainingAt(r.Context(), g, *g.VoidedAt)
			if err != nil {
				return err
			}
			ev, err := billingevents.New(g.Tenant, *g.VoidedAt, billingevents.GrantVoided{GrantID: g.ID,
				Remaining: billingevents.Amount(remaining.String()), Unit: billingevents.UnitMeterUnits, VoidedAt: *g.VoidedAt, Reason: body.Reason})
			if err != nil {
				return err
			}
			return billingevents.Enqueue(r.Context(), tx, ev)
		})
	}
	switch {
	case errors.Is(err, credits.ErrNotFound):
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "tenant %q has no grant %q", tenant, id)
	case errors.Is(err, credits.ErrVoided):
		httpjson.Errorf(w, http.StatusConflict, "grant_voided", "grant %s is voided already", id)
	case err != nil:
		a.internalError(w, r, err)
	default:
		a.opt.Logger.InfoContext(r.Context(), "credit grant voided", "grant", g.ID, "tenant", tenant, "by", p.KeyID)
		httpjson.Write(w, http.StatusOK, g)
	}
}

// inTx runs fn in a transaction of the API's database.
func (a *API) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	b, ok := a.opt.DB.(interface {
		Begin(context.Context) (pgx.Tx, error)
	})
	if !ok {
		return fmt.Errorf("the database handle %T cannot begin a transaction", a.opt.DB)
	}
	return pgx.BeginFunc(ctx, b, fn)
}

// remainingAt is what grant g had left unused at at (before a void at
// at took effect): its burn-down in the period of at when a quota burns
// it, else its whole amount while active or scheduled, and nothing once
// expired.
func (a *API) remainingAt(ctx context.Context, g credits.Grant, at time.Time) (*big.Int, error) {
	live := g
	live.VoidedAt = nil
	burn, found, err := a.opt.Usage.GrantBurn(ctx, live, at, at)
	if err != nil {
		return nil, fmt.Errorf("the remainder of grant %s: %w", g.ID, err)
	}
	if found {
		return burn.Remaining, nil
	}
	if s := status(live, at); s == "active" || s == "scheduled" {
		return big.NewInt(g.Amount), nil
	}
	return new(big.Int), nil
}

// expiredGrant is a grant that expired with an unused remainder.
type expiredGrant struct {
	credits.Grant
	Unused *big.Int `json:"unused"`
}

// grantTimeParam parses the query parameter name as RFC 3339, or returns def
// when it is absent.
func grantTimeParam(r *http.Request, name string, def time.Time) (time.Time, error) {
	q := r.URL.Query()
	v := q.Get(name)
	if v == "" && !q.Has(name) {
		return def, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return t, fmt.Errorf("%s must be an RFC 3339 time such as 2026-11-01T00:00:00Z, got %q", name, v)
	}
	return t, nil
}

// expiredGrants serves GET /v1/admin/grants/expired?from=&to=: the grants
// that expired in [from, to) (default: the 30 days up to now) with part
// of their amount unused, and how much, from the burn-down of the period
// they expired in.
func (a *API) expiredGrants(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	now := a.opt.Now()
	to, err := grantTimeParam(r, "to", now)
	var from time.Time
	if err == nil {
		from, err = grantTimeParam(r, "from", to.AddDate(0, 0, -30))
	}
	if err == nil && !from.Before(to) {
		err = errors.New("from must be before to")
	}
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	ctx := r.Context()
	gs, err := credits.Expired(ctx, a.opt.DB, from, to)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	out := []expiredGrant{}
	for _, g := range gs {
		unused := big.NewInt(g.Amount)
		burn, found, err := a.opt.Usage.GrantBurn(ctx, g, g.ExpiresAt.Add(-time.Nanosecond), now)
		if err != nil {
			a.internalError(w, r, err)
			return
		}
		if found {
			unused = burn.Unused
			if !burn.Ended { // not ended as far as now goes (from is in the future)
				continue
			}
		}
		if unused.Sign() > 0 {
			out = append(out, expiredGrant{Grant: g, Unused: unused})
		}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"from": from.UTC(), "to": to.UTC(), "grants": out})
}
