package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/store"
)

const adminBodyLimit = 1 << 20

// quotaBody is one quota of PUT /v1/admin/plans/{plan}. Limit is raw so an
// explicit null (unlimited) differs from a forgotten field.
type quotaBody struct {
	Metric          string          `json:"metric"`
	Limit           json.RawMessage `json:"limit"`
	Period          string          `json:"period"`
	BurstPercent    int             `json:"burst_percent"`
	Hard            bool            `json:"hard"`
	StripeEventName string          `json:"stripe_event_name"`
	UnitPrice       string          `json:"unit_price"`
}

var (
	priceRE    = regexp.MustCompile(`^[0-9]{1,12}(\.[0-9]{1,12})?$`)
	currencyRE = regexp.MustCompile(`^[a-z]{3}$`)
)

func (a *API) putPlan(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	name := r.PathValue("plan")
	if !events.ValidName(name) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "plan names are 1-128 characters of A-Z a-z 0-9 . _ : -")
		return
	}
	var body struct {
		Currency string      `json:"currency"`
		Quotas   []quotaBody `json:"quotas"`
	}
	if err := decodeObject(r, &body); err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	plan, err := planFromBody(name, body.Quotas)
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	plan.Currency = strings.ToLower(body.Currency)
	if plan.Currency != "" && !currencyRE.MatchString(plan.Currency) {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "currency must be an ISO 4217 code such as usd or eur, got %q", body.Currency)
		return
	}
	saved, err := a.opt.Store.PutPlan(r.Context(), plan)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, saved)
}

// decodeObject decodes r's body, which must be one JSON object of known
// fields, into v. A body of null or an array is rejected rather than
// leaving v as it was.
func decodeObject(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, adminBodyLimit+1))
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) > 0 && t[0] != '{' {
		return errors.New("the body must be a JSON object")
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return httpjson.Decode(r, adminBodyLimit, v)
}

func planFromBody(name string, qs []quotaBody) (store.Plan, error) {
	if qs == nil {
		return store.Plan{}, errors.New(`"quotas" is required: a list of {"metric", "limit", "period", "burst_percent", "hard", "stripe_event_name"}`)
	}
	plan := store.Plan{Name: name}
	seen := map[string]bool{}
	for i, q := range qs {
		field := func(f string) string { return fmt.Sprintf("quotas[%d].%s", i, f) }
		if !events.ValidName(q.Metric) {
			return plan, fmt.Errorf("%s must be 1-128 characters of A-Z a-z 0-9 . _ : -, got %q", field("metric"), q.Metric)
		}
		if seen[q.Metric] {
			return plan, fmt.Errorf("%s: metric %q appears twice", field("metric"), q.Metric)
		}
		seen[q.Metric] = true
		out := store.Quota{Metric: q.Metric, Period: q.Period, BurstPercent: q.BurstPercent, Hard: q.Hard, StripeEventName: q.StripeEventName, UnitPrice: q.UnitPrice}
		if q.UnitPrice != "" && !priceRE.MatchString(q.UnitPrice) {
			return plan, fmt.Errorf("%s must be a decimal string such as \"0.002\" (the price of one unit), got %q", field("unit_price"), q.UnitPrice)
		}
		switch raw := strings.TrimSpace(string(q.Limit)); raw {
		case "":
			return plan, fmt.Errorf("%s is required: a whole number, or null for unlimited", field("limit"))
		case "null":
		default:
			var n int64
			if err := json.Unmarshal(q.Limit, &n); err != nil || n < 0 {
				return plan, fmt.Errorf("%s must be a whole number ≥ 0 or null, got %s", field("limit"), raw)
			}
			out.Limit = &n
		}
		if out.Period == "" {
			out.Period = "month"
		}
		if out.Period != "day" && out.Period != "month" {
			return plan, fmt.Errorf("%s must be \"day\" or \"month\", got %q", field("period"), q.Period)
		}
		if out.BurstPercent < 0 || out.BurstPercent > 1000 {
			return plan, fmt.Errorf("%s must be between 0 and 1000, got %d", field("burst_percent"), q.BurstPercent)
		}
		if out.StripeEventName == "" {
			out.StripeEventName = q.Metric
		}
		if len(out.StripeEventName) > 100 || !events.ValidName(out.StripeEventName) {
			return plan, fmt.Errorf("%s must be a Stripe meter event name (1-100 characters of A-Z a-z 0-9 . _ : -), got %q", field("stripe_event_name"), out.StripeEventName)
		}
		plan.Quotas = append(plan.Quotas, out)
	}
	return plan, nil
}

func (a *API) getPlan(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	if !events.ValidName(r.PathValue("plan")) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "plan names are 1-128 characters of A-Z a-z 0-9 . _ : -")
		return
	}
	p, err := a.opt.Store.Plan(r.Context(), r.PathValue("plan"))
	if errors.Is(err, store.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no plan %q; create it with PUT /v1/admin/plans/%s", r.PathValue("plan"), r.PathValue("plan"))
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, p)
}

func (a *API) listPlans(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	names, err := a.opt.Store.ListPlans(r.Context())
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	plans := make([]store.Plan, 0, len(names))
	for _, n := range names {
		p, err := a.opt.Store.Plan(r.Context(), n)
		if err != nil {
			a.internalError(w, r, err)
			return
		}
		plans = append(plans, p)
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"plans": plans})
}

func (a *API) putTenant(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	name := r.PathValue("tenant")
	if !events.ValidName(name) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "tenant names are 1-128 characters of A-Z a-z 0-9 . _ : -")
		return
	}
	var body struct {
		Plan             string `json:"plan"`
		StripeCustomerID string `json:"stripe_customer_id"`
	}
	if err := decodeObject(r, &body); err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	if c := body.StripeCustomerID; c != "" && (!strings.HasPrefix(c, "cus_") || len(c) > 255 || !events.ValidName(c)) {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "stripe_customer_id must be a Stripe customer id such as cus_NffrFeUfNV2Hib, got %q", c)
		return
	}
	t, err := a.opt.Store.PutTenant(r.Context(), store.Tenant{Tenant: name, Plan: body.Plan, StripeCustomerID: body.StripeCustomerID})
	if errors.Is(err, store.ErrUnknownPlan) {
		httpjson.Errorf(w, http.StatusBadRequest, "unknown_plan", "no plan %q; create it first with PUT /v1/admin/plans/%s", body.Plan, body.Plan)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, t)
}

func (a *API) getTenant(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	if !events.ValidName(r.PathValue("tenant")) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "tenant names are 1-128 characters of A-Z a-z 0-9 . _ : -")
		return
	}
	t, err := a.opt.Store.Tenant(r.Context(), r.PathValue("tenant"))
	if errors.Is(err, store.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no tenant %q", r.PathValue("tenant"))
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, t)
}

func (a *API) listTenants(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	ts, err := a.opt.Store.ListTenants(r.Context())
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenants": ts})
}

func (a *API) createKey(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var body struct {
		Tenant string `json:"tenant"`
		Role   string `json:"role"`
	}
	if err := decodeObject(r, &body); err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	role := body.Role
	switch {
	case body.Tenant != "" && (role == "" || role == store.RoleTenant):
		role = store.RoleTenant
		if !events.ValidName(body.Tenant) {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "tenant must be 1-128 characters of A-Z a-z 0-9 . _ : -, got %q", body.Tenant)
			return
		}
	case body.Tenant == "" && (role == store.RoleAdmin || role == store.RoleViewer):
	default:
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", `send {"tenant":"<tenant>"} for a tenant key, or {"role":"admin"} or {"role":"viewer"}`)
		return
	}
	k, secret, err := a.opt.Auth.CreateKey(r.Context(), role, body.Tenant)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	a.opt.Logger.InfoContext(r.Context(), "API key created", "key_id", k.ID, "role", k.Role, "tenant", k.Tenant, "by", p.KeyID)
	httpjson.Write(w, http.StatusCreated, map[string]any{
		"id": k.ID, "key": secret, "role": k.Role, "tenant": k.Tenant, "created_at": k.CreatedAt,
	})
}

func (a *API) listKeys(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	keys, err := a.opt.Store.ListKeys(r.Context())
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"keys": keys})
}

func (a *API) revokeKey(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	id := r.PathValue("id")
	var err error
	if _, perr := uuid.Parse(id); perr != nil || len(id) != 36 {
		err = store.ErrNotFound // key ids are UUIDs: no other text names one
	} else {
		err = a.opt.Store.RevokeKey(r.Context(), id)
	}
	if errors.Is(err, store.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no API key with id %q", id)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	a.opt.Logger.InfoContext(r.Context(), "API key revoked", "key_id", id, "by", p.KeyID)
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) internalError(w http.ResponseWriter, r *http.Request, err error) {
	a.opt.Logger.ErrorContext(r.Context(), "request failed", "route", r.Pattern, "err", err)
	httpjson.Error(w, http.StatusInternalServerError, "internal", "the server failed to complete the request; it was logged")
}
