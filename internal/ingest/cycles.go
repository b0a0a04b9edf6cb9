package ingest

import (
	"errors"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/billingcycle"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/accounts"
)

// cycleRoutes are the admin routes of tenants' billing cycles.
func (a *API) cycleRoutes() []Route {
	return []Route{
		{"GET", "/v1/admin/tenants/{tenant}/billing-cycle", a.gate.Admin(a.getBillingCycle)},
		{"PUT", "/v1/admin/tenants/{tenant}/billing-cycle", a.gate.Admin(a.putBillingCycle)},
	}
}

// cycleBody is the body of PUT /v1/admin/tenants/{tenant}/billing-cycle.
type cycleBody struct {
	Anchor        *time.Time `json:"anchor"`
	Interval      string     `json:"interval"`
	IntervalCount *int       `json:"interval_count"`
	EffectiveFrom *time.Time `json:"effective_from"`
}

// billingCycle is the answer of GET and PUT
// /v1/admin/tenants/{tenant}/billing-cycle: the cycle in force now (the
// UTC calendar month for a tenant without one), the current period and
// the history.
type billingCycle struct {
	Tenant        string                 `json:"tenant"`
	Cycle         billingcycle.Cycle     `json:"cycle"`
	Calendar      bool                   `json:"calendar"`
	CurrentPeriod period                 `json:"current_period"`
	History       []accounts.CycleChange `json:"history"`
}

// period is a [start, end) span.
type period struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// cycleOf returns tenant's billing cycle as of now, read with q.
func cycleOf(r *http.Request, q storage.Executor, tenant string, now time.Time) (billingCycle, error) {
	hist, sched, err := accounts.TenantCycleHistory(r.Context(), q, tenant)
	if err != nil {
		return billingCycle{}, err
	}
	start, end := sched.Span(now)
	c := sched.CycleAt(now)
	if hist == nil {
		hist = []accounts.CycleChange{}
	}
	return billingCycle{Tenant: tenant, Cycle: c, Calendar: c.IsCalendar(), CurrentPeriod: period{start, end}, History: hist}, nil
}

// getBillingCycle serves GET /v1/admin/tenants/{tenant}/billing-cycle.
func (a *API) getBillingCycle(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	tenant, ok := a.tenantExists(w, r)
	if !ok {
		return
	}
	bc, err := cycleOf(r, a.opt.DB, tenant, a.opt.Now())
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, bc)
}

// putBillingCycle serves PUT /v1/admin/tenants/{tenant}/billing-cycle:
// the tenant's billing cycle from effective_from (default: now plus
// billingcycle.ChangeMargin) on, audited. A cycle with the periods already
// in force changes nothing; an effective_from earlier than now plus the
// margin is refused (422 effective_from_too_early): usage of that time may
// be counted already, in the periods in force.
func (a *API) putBillingCycle(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	tenant, ok := a.tenantExists(w, r)
	if !ok {
		return
	}
	var body cycleBody
	if _, err := decodeObjectWithoutNulls(r, &body); err != nil {
		writeBodyError(w, err)
		return
	}
	now := a.opt.Now()
	ch := billingcycle.Change{From: billingcycle.EarliestFrom(now), Cycle: billingcycle.Cycle{Interval: billingcycle.Interval(body.Interval), Count: 1}}
	if body.Anchor != nil {
		ch.Cycle.Anchor = body.Anchor.UTC()
	}
	if body.IntervalCount != nil {
		ch.Cycle.Count = *body.IntervalCount
	}
	if body.EffectiveFrom != nil {
		ch.From = body.EffectiveFrom.UTC()
	}
	if err := ch.Cycle.Validate(); err != nil {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "%v", err)
		return
	}
	var after billingCycle
	err := a.inTx(r.Context(), func(tx pgx.Tx) error {
		before, err := cycleOf(r, tx, tenant, now)
		if err != nil {
			return err
		}
		changed, err := accounts.SetCycle(r.Context(), tx, tenant, ch, now, "admin")
		if err != nil {
			return err
		}
		if after, err = cycleOf(r, tx, tenant, now); err != nil || !changed {
			return err
		}
		return appendAudit(r.Context(), tx, p, "billing_cycle.put", accounts.TenantTarget(tenant), before, after)
	})
	if errors.Is(err, accounts.ErrCycleTooEarly) {
		httpjson.Errorf(w, http.StatusUnprocessableEntity, "effective_from_too_early", "effective_from: %v", err)
		return
	}
	if errors.Is(err, accounts.ErrEffectiveFrom) {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "effective_from: %v", err)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, after)
}
