package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/planperiod"
	"github.com/usagemeter/metering/internal/price"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/auditlog"
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
	// Thresholds are the warning percentages (absent: [80]).
	Thresholds []int `json:"thresholds"`
	// Grace is a hard quota's grace before it blocks.
	Grace *accounts.Grace `json:"grace"`
	// UnitPrice is shorthand for {"model":"per_unit","unit_amount":UnitPrice}.
	UnitPrice string `json:"unit_price"`
	// Price is the quota's price (price.Parse checks it); null or absent
	// for none.
	Price json.RawMessage `json:"price"`
	// OveragePrice prices the usage beyond the allowance (price.Parse
	// checks it); null or absent for none. It needs a limit and a month
	// period.
	OveragePrice json.RawMessage `json:"overage_price"`
	// Meter names a defined meter of Metric; absent, empty or the metric
	// itself is the metric's implicit meter.
	Meter string `json:"meter"`
	// Filter: group_by property = value pairs of the meter's groups the
	// quota limits together; PerGroup: the same limit for each group.
	Filter   map[string]string `json:"filter"`
	PerGroup bool              `json:"per_group"`
}

var (
	currencyRE = regexp.MustCompile(`^[a-z]{3}$`)
)

// validName reports whether s may name a tenant or a plan: an event name
// that is not the path segment "." or "..", which no URL can address
// (/v1/quotas/.. is /v1/quotas/ to every client and router).
func validName(s string) bool { return events.ValidName(s) && s != "." && s != ".." }

const (
	planNameRule   = `plan names are 1-128 characters of A-Z a-z 0-9 . _ : -, and not "." or ".."`
	tenantNameRule = `tenant names are 1-128 characters of A-Z a-z 0-9 . _ : -, and not "." or ".."`
)

// by is the author of an admin request's changes, as the audit log
// records it: the API key that made it.
func by(p auth.Principal) auditlog.By { return auditlog.By{Actor: auditlog.KeyActor(p.KeyID)} }

func (a *API) putPlan(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	name := r.PathValue("plan")
	if !validName(name) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", planNameRule)
		return
	}
	var body struct {
		Currency string      `json:"currency"`
		Quotas   []quotaBody `json:"quotas"`
		// EffectiveFrom is when a new version takes effect (default now);
		// Proration how it applies to a period under way.
		EffectiveFrom *time.Time `json:"effective_from"`
		Proration     string     `json:"proration"`
		// HoldOnAnomaly holds unusual pushes for approval (null: never).
		HoldOnAnomaly *accounts.HoldOnAnomaly `json:"hold_on_anomaly"`
		// SpendThresholds are amounts of the plan's currency the projected
		// bill is watched for (null or absent: none).
		SpendThresholds []string `json:"spend_thresholds"`
	}
	if err := decodeObject(r, &body); err != nil {
		writeBodyError(w, err)
		return
	}
	plan, err := planFromBody(name, body.Quotas)
	if err == nil {
		err = a.checkQuotaMeters(r.Context(), plan)
	}
	var internal *internalErr
	if errors.As(err, &internal) {
		a.internalError(w, r, internal.err)
		return
	}
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	plan.Currency = strings.ToLower(body.Currency)
	if plan.Currency != "" && !currencyRE.MatchString(plan.Currency) {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "currency must be an ISO 4217 code such as usd or eur, got %q", body.Currency)
		return
	}
	plan.Proration = body.Proration
	if plan.Proration != "" && !planperiod.Proration(plan.Proration).Valid() {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", `proration must be "prorate", "immediate" or "next_period", got %q`, body.Proration)
		return
	}
	plan.EffectiveFrom = body.EffectiveFrom
	if body.HoldOnAnomaly != nil {
		if err := body.HoldOnAnomaly.Check(); err != nil {
			httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
			return
		}
		plan.HoldOnAnomaly = body.HoldOnAnomaly
	}
	if err := accounts.CheckSpendThresholds(body.SpendThresholds); err != nil {
		httpjson.Error(w, http.StatusUnprocessableEntity, "invalid_spend_thresholds", err.Error())
		return
	}
	plan.SpendThresholds = body.SpendThresholds
	saved, _, err := a.opt.Store.WithAudit(by(p)).SavePlan(r.Context(), plan, a.opt.Now())
	if errors.Is(err, accounts.ErrEffectiveFrom) {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "effective_from must be after the latest version's: %v", err)
		return
	}
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
	body, err := httpjson.ReadBody(r, adminBodyLimit)
	if err != nil {
		return err
	}
	return decodeObjectBytes(body, v)
}

// decodeObjectBytes is decodeObject for a body already read.
func decodeObjectBytes(body []byte, v any) error {
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) > 0 && t[0] != '{' {
		return errors.New("the body must be a JSON object")
	}
	return httpjson.DecodeBytes(body, adminBodyLimit, v)
}

// decodeObjectWithoutNulls is decodeObject that also refuses an explicit
// null for any top-level field but those named nullable, so that a null
// is never taken for an absent field. It returns the names of the fields
// the body holds, so that an empty value sent is not taken for one left
// out either.
func decodeObjectWithoutNulls(r *http.Request, v any, nullable ...string) (map[string]bool, error) {
	body, err := httpjson.ReadBody(r, adminBodyLimit)
	if err != nil {
		return nil, err
	}
	if err := decodeObjectBytes(body, v); err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, fmt.Errorf("the body is not valid JSON: %w", err)
	}
	present := make(map[string]bool, len(fields))
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		if string(bytes.TrimSpace(fields[k])) == "null" && !slices.Contains(nullable, k) {
			return nil, fmt.Errorf("field %q must not be null: leave it out for its default", k)
		}
		present[k] = true
	}
	return present, nil
}

// writeBodyError answers a body decodeObject refused: 415 for a
// Content-Encoding, 400 otherwise.
func writeBodyError(w http.ResponseWriter, err error) {
	if errors.Is(err, httpjson.ErrEncoding) {
		httpjson.Error(w, http.StatusUnsupportedMediaType, "unsupported_encoding", err.Error())
		return
	}
	httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
}

// decodeOptionalObject is decodeObject for routes whose body may be
// empty, leaving v as it was.
func decodeOptionalObject(r *http.Request, v any) error {
	body, err := httpjson.ReadBody(r, adminBodyLimit)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	return decodeObjectBytes(body, v)
}

func planFromBody(name string, qs []quotaBody) (accounts.Plan, error) {
	if qs == nil {
		return accounts.Plan{}, errors.New(`"quotas" is required: a list of {"metric", "limit", "period", "burst_percent", "hard", "stripe_event_name", "unit_price", "price", "meter", "filter", "per_group"}`)
	}
	plan := accounts.Plan{Name: name}
	seen := map[string]int{}
	for i, q := range qs {
		field := func(f string) string { return fmt.Sprintf("quotas[%d].%s", i, f) }
		if !events.ValidName(q.Metric) {
			return plan, fmt.Errorf("%s must be 1-128 characters of A-Z a-z 0-9 . _ : -, got %q", field("metric"), q.Metric)
		}
		out := accounts.Quota{Metric: q.Metric, Period: q.Period, BurstPercent: q.BurstPercent, Hard: q.Hard, StripeEventName: q.StripeEventName,
			Filter: q.Filter, PerGroup: q.PerGroup}
		if q.Meter != q.Metric {
			out.Meter = q.Meter
		}
		if err := checkQuotaGroups(out, field); err != nil {
			return plan, err
		}
		key := quotaKey(out)
		if j, ok := seen[key]; ok {
			if out.Meter == "" {
				return plan, fmt.Errorf("%s: metric %q appears twice (quotas[%d]); a plan holds one quota on a metric's implicit meter", field("metric"), q.Metric, j)
			}
			return plan, fmt.Errorf("%s: the quota on meter %q with this filter and per_group appears twice (quotas[%d])", field("meter"), out.Meter, j)
		}
		seen[key] = i
		if err := quotaPrice(&out, q, field); err != nil {
			return plan, err
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
		if raw := bytes.TrimSpace(q.OveragePrice); len(raw) > 0 && string(raw) != "null" {
			p, ferr := price.Parse(raw)
			if ferr != nil {
				name := field("overage_price")
				if ferr.Field != "" {
					name += "." + ferr.Field
				}
				return plan, fmt.Errorf("%s %s", name, ferr.Message)
			}
			if out.Limit == nil || out.Period != "month" {
				return plan, fmt.Errorf("%s prices the usage beyond a monthly allowance: the quota needs a limit and period \"month\"", field("overage_price"))
			}
			out.OveragePrice = &p
		}
		out.Thresholds = q.Thresholds
		if out.Thresholds == nil {
			out.Thresholds = quota.DefaultThresholds
		}
		if err := quota.ValidThresholds(out.Thresholds); err != nil {
			return plan, fmt.Errorf("%s: %w", field("thresholds"), err)
		}
		if q.Grace != nil {
			if !q.Hard {
				return plan, fmt.Errorf("%s delays the block of a hard quota: set \"hard\": true", field("grace"))
			}
			if err := q.Grace.Check(); err != nil {
				return plan, fmt.Errorf("%s: %w", field("grace"), err)
			}
			g := *q.Grace
			if d, err := time.ParseDuration(g.Duration); err == nil {
				g.Duration = d.String()
			}
			out.Grace = &g
		}
		if out.BurstPercent < 0 || out.BurstPercent > 1000 {
			return plan, fmt.Errorf("%s must be between 0 and 1000, got %d", field("burst_percent"), q.BurstPercent)
		}
		if out.Meter == "" {
			if out.StripeEventName == "" {
				out.StripeEventName = q.Metric
			}
			if strings.ContainsAny(out.StripeEventName, "{}") {
				return plan, fmt.Errorf("%s: {property} placeholders name a defined meter's groups; the implicit meter %q has none", field("stripe_event_name"), q.Metric)
			}
			if len(out.StripeEventName) > meter.MaxStripeEventName || !events.ValidName(out.StripeEventName) {
				return plan, fmt.Errorf("%s must be a Stripe meter event name (1-100 characters of A-Z a-z 0-9 . _ : -), got %q", field("stripe_event_name"), out.StripeEventName)
			}
		}
		plan.Quotas = append(plan.Quotas, out)
	}
	return plan, nil
}

// quotaPrice sets out's price from q's price and unit_price: unit_price
// is shorthand for a per_unit price, and both may be sent (as a plan is
// shown) when they say the same.
func quotaPrice(out *accounts.Quota, q quotaBody, field func(string) string) error {
	if q.UnitPrice != "" && !price.ValidDecimal(q.UnitPrice) {
		return fmt.Errorf("%s must be a decimal string such as \"0.002\" (the price of one unit), got %q", field("unit_price"), q.UnitPrice)
	}
	out.UnitPrice = ""
	if raw := bytes.TrimSpace(q.Price); len(raw) > 0 && string(raw) != "null" {
		p, ferr := price.Parse(raw)
		if ferr != nil {
			name := field("price")
			if ferr.Field != "" {
				name += "." + ferr.Field
			}
			return fmt.Errorf("%s %s", name, ferr.Message)
		}
		if q.UnitPrice != "" && !sameAmount(p.UnitPrice(), q.UnitPrice) {
			return fmt.Errorf("%s: %q is shorthand for {\"model\":\"per_unit\",\"unit_amount\":%q}, which is not the price sent in %s; send one of them",
				field("unit_price"), q.UnitPrice, q.UnitPrice, field("price"))
		}
		out.Price = &p
		return nil
	}
	if q.UnitPrice != "" {
		p := price.PerUnitPrice(q.UnitPrice)
		out.Price = &p
	}
	return nil
}

// sameAmount reports whether two decimal strings are one amount ("0.5"
// and "0.50").
func sameAmount(a, b string) bool {
	x, okx := new(big.Rat).SetString(a)
	y, oky := new(big.Rat).SetString(b)
	return okx && oky && x.Cmp(y) == 0
}

// checkQuotaGroups checks what a quota says of a meter's groups, without
// the meter's definition (checkQuotaMeters has it): the implicit meter has
// none; a defined meter's quota is on some groups (a filter) or on each
// (per_group), not both.
func checkQuotaGroups(q accounts.Quota, field func(string) string) error {
	if q.Meter == "" {
		switch {
		case len(q.Filter) > 0:
			return fmt.Errorf("%s: the implicit meter %q has no groups to filter; name a defined meter of the metric in %s", field("filter"), q.Metric, field("meter"))
		case q.PerGroup:
			return fmt.Errorf("%s: the implicit meter %q has no groups; name a defined meter of the metric in %s", field("per_group"), q.Metric, field("meter"))
		}
		return nil
	}
	if !events.ValidName(q.Meter) {
		return fmt.Errorf("%s must be a meter name (1-128 characters of A-Z a-z 0-9 . _ : -), got %q", field("meter"), q.Meter)
	}
	if q.PerGroup && len(q.Filter) > 0 {
		return fmt.Errorf("%s: a per_group quota sets one limit for each group and takes no filter; make one quota per filter instead", field("filter"))
	}
	if q.StripeEventName != "" {
		if _, err := meter.EventNamePlaceholders(q.StripeEventName); err != nil {
			return fmt.Errorf("%s: %w", field("stripe_event_name"), err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(q.Filter)) {
		if v := q.Filter[k]; len(v) > events.MaxPropertyValueLen || !utf8.ValidString(v) {
			return fmt.Errorf("%s must be a property value (valid UTF-8, at most %d bytes)", field("filter."+truncateField(k)), events.MaxPropertyValueLen)
		}
	}
	return nil
}

// quotaKey is what identifies a quota in its plan: metric, meter, filter
// and per_group.
func quotaKey(q accounts.Quota) string {
	filter, _ := json.Marshal(q.Filter) // a map of strings always encodes, keys sorted
	return fmt.Sprintf("%s\x00%s\x00%s\x00%t", q.Metric, q.Meter, filter, q.PerGroup)
}

// internalErr is an error of the store, not of the request.
type internalErr struct{ err error }

func (e *internalErr) Error() string { return e.err.Error() }

// checkQuotaMeters checks each quota on a defined meter against the
// meter's definition: the meter exists and counts the quota's metric, the
// filter names only its group_by properties, and per_group needs groups.
func (a *API) checkQuotaMeters(ctx context.Context, p accounts.Plan) error {
	billed := map[string]int{} // meter: the quota that bills it
	for i, q := range p.Quotas {
		if q.Meter == "" {
			continue
		}
		field := func(f string) string { return fmt.Sprintf("quotas[%d].%s", i, f) }
		m, err := a.opt.Store.LookupMeter(ctx, q.Meter)
		if errors.Is(err, accounts.ErrNotFound) {
			return fmt.Errorf("%s: no meter %q; define it first with PUT /v1/admin/meters/%s, or leave meter out for the implicit meter of %q", field("meter"), q.Meter, q.Meter, q.Metric)
		}
		if err != nil {
			return &internalErr{err}
		}
		if m.Metric != q.Metric {
			return fmt.Errorf("%s: meter %q counts metric %q, not %q", field("meter"), q.Meter, m.Metric, q.Metric)
		}
		for _, k := range slices.Sorted(maps.Keys(q.Filter)) {
			if !slices.Contains(m.GroupBy, k) {
				return fmt.Errorf("%s: %q is not among the group_by properties of meter %q (%s)", field("filter."+truncateField(k)), k, q.Meter, groupByList(m.GroupBy))
			}
		}
		if q.PerGroup && len(m.GroupBy) == 0 {
			return fmt.Errorf("%s: meter %q has no group_by properties, so no groups to limit one by one", field("per_group"), q.Meter)
		}
		if err := checkQuotaBilling(q, m, field); err != nil {
			return err
		}
		if q.StripeEventName != "" {
			if j, ok := billed[q.Meter]; ok {
				return fmt.Errorf("%s: meter %q is billed by quotas[%d] already; a plan bills a meter through one quota", field("stripe_event_name"), q.Meter, j)
			}
			billed[q.Meter] = i
		}
	}
	return nil
}

// checkQuotaBilling checks a billed quota on defined meter m: m's
// aggregation adds up (Stripe sums the deltas it is sent), and the Stripe
// event name has a {property} placeholder for each of m's group_by
// properties and for no other, so that each group has its own Stripe meter.
func checkQuotaBilling(q accounts.Quota, m accounts.Meter, field func(string) string) error {
	if q.StripeEventName == "" {
		return nil
	}
	if m.Aggregation == string(meter.Latest) {
		return fmt.Errorf("%s: meter %q keeps the latest value, which is not additive: Stripe sums the deltas it receives, and a latest value can fall; "+
			"limit it with this quota, but bill a sum, count, max or unique_count meter", field("stripe_event_name"), q.Meter)
	}
	names, err := meter.EventNamePlaceholders(q.StripeEventName)
	if err != nil {
		return fmt.Errorf("%s: %w", field("stripe_event_name"), err)
	}
	for _, n := range names {
		if !slices.Contains(m.GroupBy, n) {
			return fmt.Errorf("%s: placeholder {%s} is not among the group_by properties of meter %q (%s)", field("stripe_event_name"), truncateField(n), q.Meter, groupByList(m.GroupBy))
		}
	}
	for _, g := range m.GroupBy {
		if !slices.Contains(names, g) {
			return fmt.Errorf("%s: meter %q groups by %q, so the name needs a {%s} placeholder: each group is billed to its own Stripe meter", field("stripe_event_name"), q.Meter, truncateField(g), truncateField(g))
		}
	}
	return nil
}

func groupByList(groupBy []string) string {
	if len(groupBy) == 0 {
		return "it has none"
	}
	b, _ := json.Marshal(groupBy)
	return "group_by " + string(b)
}

// truncateField shortens a client's key for an error's field name.
func truncateField(k string) string {
	if len(k) > 32 || !utf8.ValidString(k) {
		return strings.ToValidUTF8(k[:min(len(k), 32)], "?") + "..."
	}
	return k
}

func (a *API) getPlan(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	if !validName(r.PathValue("plan")) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", planNameRule)
		return
	}
	p, err := a.opt.Store.PlanAt(r.Context(), r.PathValue("plan"), a.opt.Now())
	if errors.Is(err, accounts.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no plan %q; create it with PUT /v1/admin/plans/%s", r.PathValue("plan"), r.PathValue("plan"))
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, p)
}

func (a *API) getPlanVersions(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	name := r.PathValue("plan")
	if !validName(name) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", planNameRule)
		return
	}
	versions, err := a.opt.Store.PlanVersions(r.Context(), name, a.opt.Now())
	if errors.Is(err, accounts.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no plan %q; create it with PUT /v1/admin/plans/%s", name, name)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"plan": name, "versions": versions})
}

func (a *API) listPlans(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	names, err := a.opt.Store.ListPlans(r.Context())
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	plans := make([]accounts.Plan, 0, len(names))
	for _, n := range names {
		p, err := a.opt.Store.PlanAt(r.Context(), n, a.opt.Now())
		if err != nil {
			a.internalError(w, r, err)
			return
		}
		plans = append(plans, p)
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"plans": plans})
}

func (a *API) putTenant(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	name := r.PathValue("tenant")
	if !validName(name) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", tenantNameRule)
		return
	}
	var body struct {
		Plan             string `json:"plan"`
		StripeCustomerID string `json:"stripe_customer_id"`
		// PlanEffectiveFrom is when the plan takes effect (default now).
		PlanEffectiveFrom *time.Time `json:"plan_effective_from"`
	}
	if err := decodeObject(r, &body); err != nil {
		writeBodyError(w, err)
		return
	}
	if body.Plan != "" && !validName(body.Plan) {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "plan: %s, got %q", planNameRule, body.Plan)
		return
	}
	if c := body.StripeCustomerID; c != "" && (!strings.HasPrefix(c, "cus_") || len(c) > 255 || !events.ValidName(c)) {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "stripe_customer_id must be a Stripe customer id such as cus_NffrFeUfNV2Hib, got %q", c)
		return
	}
	var effective time.Time
	if body.PlanEffectiveFrom != nil {
		effective = *body.PlanEffectiveFrom
	}
	// plan.changed is queued in the transaction of a real change.
	store := a.opt.Store.WithPlanHook(billingevents.PlanHook(a.defaultPlan())).WithAudit(by(p))
	t, err := store.SetTenant(r.Context(), accounts.Tenant{Tenant: name, Plan: body.Plan, StripeCustomerID: body.StripeCustomerID}, effective, a.opt.Now())
	if errors.Is(err, accounts.ErrEffectiveFrom) {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "plan_effective_from: %v", err)
		return
	}
	if errors.Is(err, accounts.ErrUnknownPlan) {
		httpjson.Errorf(w, http.StatusBadRequest, "unknown_plan", "no plan %q; create it first with PUT /v1/admin/plans/%s", body.Plan, body.Plan)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, t)
}

func (a *API) getTenantPlans(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	name := r.PathValue("tenant")
	if !validName(name) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", tenantNameRule)
		return
	}
	hist, err := a.opt.Store.TenantPlans(r.Context(), name)
	if errors.Is(err, accounts.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no tenant %q", name)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if hist == nil {
		hist = []accounts.Assignment{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenant": name, "plans": hist})
}

func (a *API) getTenant(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	if !validName(r.PathValue("tenant")) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", tenantNameRule)
		return
	}
	t, err := a.opt.Store.Tenant(r.Context(), r.PathValue("tenant"))
	if errors.Is(err, accounts.ErrNotFound) {
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

// keyBody is the body of POST /v1/admin/keys.
type keyBody struct {
	Tenant string `json:"tenant"`
	Role   string `json:"role"`
	Scope  string `json:"scope"`
	// ExpiresAt (RFC 3339) or ExpiresIn (a Go duration such as 720h);
	// pointers, so that an empty string sent is refused, not taken as
	// absent.
	ExpiresAt *string `json:"expires_at"`
	ExpiresIn *string `json:"expires_in"`
}

// keySpec checks b; the error is the message of a 400.
func keySpec(b keyBody, now time.Time) (auth.KeySpec, error) {
	spec := auth.KeySpec{Role: b.Role, Tenant: b.Tenant, Scope: b.Scope}
	switch {
	case b.Tenant != "" && (b.Role == "" || b.Role == accounts.RoleTenant):
		spec.Role = accounts.RoleTenant
		if !validName(b.Tenant) {
			return spec, fmt.Errorf("tenant: %s, got %q", tenantNameRule, b.Tenant)
		}
		switch b.Scope {
		case "":
			spec.Scope = accounts.ScopeWrite
		case accounts.ScopeWrite, accounts.ScopeRead:
		default:
			return spec, fmt.Errorf(`scope must be "write" (send and read the tenant's events, the default) or "read" (read only), got %q`, b.Scope)
		}
	case b.Tenant == "" && (b.Role == accounts.RoleAdmin || b.Role == accounts.RoleViewer):
		if b.Scope != "" {
			return spec, fmt.Errorf(`scope applies to tenant keys only; a %s key has none`, b.Role)
		}
	default:
		return spec, errors.New(`send {"tenant":"<tenant>"} (or with "scope":"read") for a tenant key, or {"role":"admin"} or {"role":"viewer"}`)
	}
	exp, err := expiry(b.ExpiresAt, b.ExpiresIn, now)
	spec.ExpiresAt = exp
	return spec, err
}

// expiry reads an optional expires_at or expires_in (nil: not sent);
// nil means never.
func expiry(at, in *string, now time.Time) (*time.Time, error) {
	switch {
	case at != nil && in != nil:
		return nil, errors.New("send expires_at or expires_in, not both")
	case at != nil:
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return nil, fmt.Errorf("expires_at must be an RFC 3339 time such as 2027-01-31T00:00:00Z, got %q", *at)
		}
		if !t.After(now) {
			return nil, fmt.Errorf("expires_at %s is not in the future", *at)
		}
		return &t, nil
	case in != nil:
		d, err := time.ParseDuration(*in)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("expires_in must be a positive duration such as 720h or 90m, got %q", *in)
		}
		t := now.Add(d)
		return &t, nil
	}
	return nil, nil
}

// keyResponse is a key as created: the record and its secret, shown once.
func keyResponse(k accounts.Key, secret string) map[string]any {
	m := map[string]any{
		"id": k.ID, "key": secret, "role": k.Role, "tenant": k.Tenant,
		"created_at": k.CreatedAt, "expires_at": k.ExpiresAt, "rotated_from": k.RotatedFrom,
	}
	if k.Scope != "" {
		m["scope"] = k.Scope
	}
	return m
}

func (a *API) createKey(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var body keyBody
	if err := decodeObject(r, &body); err != nil {
		writeBodyError(w, err)
		return
	}
	spec, err := keySpec(body, a.opt.Now())
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	spec.By = by(p)
	k, secret, err := a.opt.Auth.CreateKey(r.Context(), spec)
	if errors.Is(err, accounts.ErrUnknownTenant) {
		httpjson.Errorf(w, http.StatusNotFound, "unknown_tenant", "no tenant %q; create it first with PUT /v1/admin/tenants/%s", body.Tenant, body.Tenant)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	a.opt.Logger.InfoContext(r.Context(), "API key created", "key_id", k.ID, "role", k.Role, "tenant", k.Tenant, "scope", k.Scope, "by", p.KeyID)
	httpjson.Write(w, http.StatusCreated, keyResponse(k, secret))
}

func (a *API) listKeys(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	keys, err := a.opt.Store.ListKeys(r.Context())
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"keys": keys})
}

// keyID returns the {id} of r if it can name a stored key (a UUID).
func keyID(r *http.Request) (string, bool) {
	id := r.PathValue("id")
	_, err := uuid.Parse(id)
	return id, err == nil && len(id) == 36
}

func (a *API) revokeKey(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	if r.PathValue("id") == auth.BootstrapKeyID {
		a.revokeBootstrapKey(w, r, p)
		return
	}
	id, ok := keyID(r)
	err := accounts.ErrNotFound // key ids are UUIDs: no other text names one
	if ok {
		err = a.opt.Store.WithAudit(by(p)).RevokeKey(r.Context(), id)
	}
	if errors.Is(err, accounts.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no API key with id %q", r.PathValue("id"))
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	a.opt.Logger.InfoContext(r.Context(), "API key revoked", "key_id", id, "by", p.KeyID)
	w.WriteHeader(http.StatusNoContent)
}

// revokeBootstrapKey serves DELETE /v1/admin/keys/bootstrap: the value of
// ADMIN_API_KEY this service holds is refused by every service from the
// next request on, restarts included.
func (a *API) revokeBootstrapKey(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	k, err := a.opt.Auth.RevokeBootstrap(r.Context(), by(p))
	if errors.Is(err, auth.ErrNoBootstrapKey) {
		httpjson.Error(w, http.StatusNotFound, "not_found", "this service runs without ADMIN_API_KEY: there is no bootstrap key to revoke")
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	a.opt.Logger.WarnContext(r.Context(), "bootstrap admin key (ADMIN_API_KEY) revoked; restart with a new ADMIN_API_KEY value to have one again",
		"record_id", k.ID, "by", p.KeyID)
	w.WriteHeader(http.StatusNoContent)
}

// defaultGrace is how long a rotated key keeps working by default.
const defaultGrace = 24 * time.Hour

// rotateKey serves POST /v1/admin/keys/{id}/rotate: a new key with the
// role, tenant and scope of key id, which itself keeps working for the
// grace asked (defaultGrace if none); 201 with the new key, its secret
// and the old key as it now is.
func (a *API) rotateKey(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	if r.PathValue("id") == auth.BootstrapKeyID {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request",
			"the bootstrap key is not stored: create a stored admin key, DELETE /v1/admin/keys/bootstrap, and restart with a new ADMIN_API_KEY if you still want one")
		return
	}
	grace, exp, ok := a.rotateRequest(w, r)
	if !ok {
		return
	}
	id, ok := keyID(r)
	err := accounts.ErrNotFound
	var k, old accounts.Key
	var secret string
	if ok {
		k, secret, old, err = a.opt.Auth.RotateKey(r.Context(), id, grace, exp, by(p))
	}
	if err != nil {
		a.writeRotateError(w, r, id, err)
		return
	}
	a.opt.Logger.InfoContext(r.Context(), "API key rotated", "key_id", k.ID, "rotated_from", id, "grace", grace, "by", p.KeyID)
	resp := keyResponse(k, secret)
	resp["old_key"] = old
	httpjson.Write(w, http.StatusCreated, resp)
}

// rotateRequest reads the optional body of a rotation: how long the old
// key keeps working (grace, defaultGrace when not sent) and when the new
// one expires (nil: never). On a bad body it has answered 400 (ok false).
func (a *API) rotateRequest(w http.ResponseWriter, r *http.Request) (grace time.Duration, exp *time.Time, ok bool) {
	var body struct {
		Grace     string  `json:"grace"`
		ExpiresAt *string `json:"expires_at"`
		ExpiresIn *string `json:"expires_in"`
	}
	if err := decodeOptionalObject(r, &body); err != nil {
		writeBodyError(w, err)
		return 0, nil, false
	}
	grace = defaultGrace
	if body.Grace != "" {
		d, err := time.ParseDuration(body.Grace)
		if err != nil || d < 0 {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request",
				"grace must be a duration such as 24h (how long the old key keeps working; 0s revokes it now), got %q", body.Grace)
			return 0, nil, false
		}
		grace = d
	}
	exp, err := expiry(body.ExpiresAt, body.ExpiresIn, a.opt.Now())
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
		return 0, nil, false
	}
	return grace, exp, true
}

// writeRotateError answers a rotation of key id that failed with err: 404
// for a key or tenant that does not exist, 409 for a key that cannot be
// rotated (revoked, expired, rotated before), 500 otherwise.
func (a *API) writeRotateError(w http.ResponseWriter, r *http.Request, id string, err error) {
	switch {
	case errors.Is(err, accounts.ErrNotFound):
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no API key with id %q", r.PathValue("id"))
	case errors.Is(err, accounts.ErrKeyRevoked):
		httpjson.Errorf(w, http.StatusConflict, "key_revoked", "API key %s is revoked; create a new key with POST /v1/admin/keys instead", id)
	case errors.Is(err, accounts.ErrKeyExpired):
		httpjson.Errorf(w, http.StatusConflict, "key_expired", "API key %s has expired; create a new key with POST /v1/admin/keys instead", id)
	case errors.Is(err, accounts.ErrKeyRotated):
		httpjson.Errorf(w, http.StatusConflict, "key_rotated", "API key %s was already rotated; rotate its successor (GET /v1/admin/keys lists it with rotated_from) or create a new key", id)
	case errors.Is(err, accounts.ErrUnknownTenant):
		httpjson.Errorf(w, http.StatusNotFound, "unknown_tenant", "API key %s belongs to a tenant that no longer exists; create the tenant again with PUT /v1/admin/tenants/{tenant} first", id)
	default:
		a.internalError(w, r, err)
	}
}

func (a *API) internalError(w http.ResponseWriter, r *http.Request, err error) {
	a.opt.Logger.ErrorContext(r.Context(), "request failed", "route", r.Pattern, "err", err)
	httpjson.Error(w, http.StatusInternalServerError, "internal", "the server failed to complete the request; it was logged")
}

// defaultPlan is the configured default plan ("" for none), as the usage
// reader knows it.
func (a *API) defaultPlan() string {
	if a.opt.Usage == nil {
		return ""
	}
	return a.opt.Usage.DefaultPlan()
}
