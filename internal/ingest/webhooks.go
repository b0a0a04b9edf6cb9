package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/notify"
	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/storage/webhooks"
)

// webhookRoutes are the routes of webhook endpoints and deliveries:
// operators (admin and viewer keys) read endpoints, never their secrets,
// and deliveries; admins change endpoints and redeliver.
func (a *API) webhookRoutes() []Route {
	return []Route{
		{"GET", "/v1/admin/tenants/{tenant}/webhooks", a.gate.Operator(a.listWebhooks)},
		{"POST", "/v1/admin/tenants/{tenant}/webhooks", a.gate.Admin(a.createWebhook)},
		{"GET", "/v1/admin/tenants/{tenant}/webhooks/{id}", a.gate.Operator(a.getWebhook)},
		{"PATCH", "/v1/admin/tenants/{tenant}/webhooks/{id}", a.gate.Admin(a.patchWebhook)},
		{"DELETE", "/v1/admin/tenants/{tenant}/webhooks/{id}", a.gate.Admin(a.deleteWebhook)},
		{"POST", "/v1/admin/tenants/{tenant}/webhooks/{id}/rotate-secret", a.gate.Admin(a.rotateWebhookSecret)},
		{"GET", "/v1/admin/tenants/{tenant}/webhooks/{id}/deliveries", a.gate.Operator(a.listWebhookDeliveries)},
		{"POST", "/v1/admin/webhooks/deliveries/{id}/redeliver", a.gate.Admin(a.redeliverWebhook)},
	}
}

// SecretOverlap is how long a rotated-out secret keeps signing.
const SecretOverlap = 24 * time.Hour

// Limits of an endpoint's settings.
const (
	maxWebhookURL        = 2048
	maxSpendThresholds   = 20
	maxWebhookDescribing = 1024
)

// thresholdRE is a spend threshold: a positive amount with at most two
// decimals, written as such ("100", "99.5", "1000.00").
var thresholdRE = regexp.MustCompile(`^[0-9]{1,12}(\.[0-9]{1,2})?$`)

// webhookBody is the body of POST .../webhooks and PATCH .../webhooks/{id}
// (every field optional there).
type webhookBody struct {
	URL             *string   `json:"url"`
	Kinds           *[]string `json:"kinds"`
	SpendThresholds *[]string `json:"spend_thresholds"`
	Description     *string   `json:"description"`
	State           *string   `json:"state"`
}

// checkWebhookURL says why s may not be an endpoint's URL ("" when it may).
func (a *API) checkWebhookURL(s string) string {
	u, err := url.Parse(s)
	switch {
	case err != nil || len(s) > maxWebhookURL || !utf8.ValidString(s) || strings.ContainsFunc(s, isControl):
		return fmt.Sprintf("must be an absolute URL of at most %d characters", maxWebhookURL)
	case u.Scheme == "http" && !a.opt.WebhookAllowHTTP:
		return "must be https:// (http:// is accepted only when ingest runs with WEBHOOK_ALLOW_HTTP=true)"
	case u.Scheme != "https" && u.Scheme != "http":
		return "must be an https:// URL"
	case u.Host == "" || u.Hostname() == "":
		return "must name a host"
	case u.User != nil:
		return "must not carry credentials (user:password@)"
	case u.Fragment != "" || strings.Contains(s, "#"):
		return "must not have a #fragment"
	}
	return ""
}

// applyWebhookBody checks b and applies it to e; create requires url and
// kinds.
func (a *API) applyWebhookBody(e *webhooks.Endpoint, b webhookBody, create bool) []fieldError {
	var errs []fieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, fieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	if b.URL != nil {
		if msg := a.checkWebhookURL(*b.URL); msg != "" {
			add("url", "%s", msg)
		} else {
			e.URL = *b.URL
		}
	} else if create {
		add("url", "is required: the https:// URL notifications are POSTed to")
	}
	if b.Kinds != nil {
		kinds := slices.Clone(*b.Kinds)
		slices.Sort(kinds)
		kinds = slices.Compact(kinds)
		if len(kinds) == 0 {
			add("kinds", "must name at least one of %s", strings.Join(notify.Kinds, ", "))
		}
		for _, k := range kinds {
			if !slices.Contains(notify.Kinds, k) {
				add("kinds", "%q is no event kind; kinds are %s", k, strings.Join(notify.Kinds, ", "))
			}
		}
		e.Kinds = kinds
	} else if create {
		add("kinds", "is required: a list of %s", strings.Join(notify.Kinds, ", "))
	}
	if b.SpendThresholds != nil {
		ts := *b.SpendThresholds
		if len(ts) > maxSpendThresholds {
			add("spend_thresholds", "at most %d thresholds", maxSpendThresholds)
		}
		var ok []string
		for _, t := range ts {
			if !thresholdRE.MatchString(t) || strings.Trim(t, "0.") == "" {
				add("spend_thresholds", "%q is no amount: write a positive decimal with at most 2 decimals, such as \"100.00\"", t)
				continue
			}
			v, _ := new(big.Rat).SetString(t)
			if slices.ContainsFunc(ok, func(o string) bool { x, _ := new(big.Rat).SetString(o); return x.Cmp(v) == 0 }) {
				add("spend_thresholds", "%q is listed twice", t)
				continue
			}
			ok = append(ok, t)
		}
		e.SpendThresholds = ok
	}
	if len(e.SpendThresholds) > 0 && !slices.Contains(e.Kinds, notify.KindSpendThreshold) {
		add("spend_thresholds", "need the kind %s in kinds", notify.KindSpendThreshold)
	}
	if b.Description != nil {
		if utf8.RuneCountInString(*b.Description) > maxWebhookDescribing || strings.ContainsFunc(*b.Description, isControl) || !storableText(*b.Description) {
			add("description", "must be at most %d characters, without control characters", maxWebhookDescribing)
		} else {
			e.Description = *b.Description
		}
	}
	if b.State != nil {
		if create {
			add("state", "is set by PATCH; an endpoint starts active")
		} else if *b.State != webhooks.StateActive && *b.State != webhooks.StateDisabled {
			add("state", `must be "active" or "disabled" (failing is set by deliveries), got %q`, *b.State)
		} else {
			e.State = *b.State
		}
	}
	return errs
}

// webhookWithSecret is an endpoint as created or rotated: the secret is
// shown this once.
type webhookWithSecret struct {
	webhooks.Endpoint
	Secret string `json:"secret"`
}

func endpointJSON(e webhooks.Endpoint) json.RawMessage {
	b, _ := json.Marshal(e)
	return b
}

// createWebhook serves POST /v1/admin/tenants/{tenant}/webhooks.
func (a *API) createWebhook(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	tenant, ok := a.tenantExists(w, r)
	if !ok {
		return
	}
	var body webhookBody
	if _, err := decodeObjectWithoutNulls(r, &body); err != nil {
		writeBodyError(w, err)
		return
	}
	e := webhooks.Endpoint{Tenant: tenant, CreatedAt: a.opt.Now().UTC()}
	if errs := a.applyWebhookBody(&e, body, true); len(errs) > 0 {
		writeFieldErrors(w, "invalid_webhook", "invalid webhook endpoint", errs)
		return
	}
	id, err := uuid.NewV7()
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	e.ID = id.String()
	if e.Secret, err = notify.NewSecret(); err != nil {
		a.internalError(w, r, err)
		return
	}
	var saved webhooks.Endpoint
	err = a.inTx(r.Context(), func(tx pgx.Tx) error {
		var err error
		if saved, err = webhooks.CreateEndpoint(r.Context(), tx, e); err != nil {
			return err
		}
		_, err = auditlog.Append(r.Context(), tx, auditlog.Entry{Actor: auditlog.KeyActor(p.KeyID), Action: "webhook.create",
			Target: notify.EndpointTarget(saved.ID), After: endpointJSON(saved)})
		return err
	})
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	a.opt.Logger.InfoContext(r.Context(), "webhook endpoint created", "endpoint", saved.ID, "tenant", tenant, "by", p.KeyID)
	httpjson.Write(w, http.StatusCreated, webhookWithSecret{Endpoint: saved, Secret: saved.Secret})
}

// listWebhooks serves GET /v1/admin/tenants/{tenant}/webhooks.
func (a *API) listWebhooks(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	tenant, ok := a.tenantExists(w, r)
	if !ok {
		return
	}
	es, err := webhooks.ListEndpoints(r.Context(), a.opt.DB, tenant)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if es == nil {
		es = []webhooks.Endpoint{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenant": tenant, "webhooks": es})
}

// webhookID returns the path's endpoint id, answering 404 when it cannot
// name one (ids are UUIDs).
func webhookID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	u, err := uuid.Parse(id)
	if err != nil || len(id) != 36 {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no webhook endpoint %q", id)
		return "", false
	}
	return u.String(), true
}

func (a *API) writeWebhookErr(w http.ResponseWriter, r *http.Request, id string, err error) {
	if errors.Is(err, webhooks.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no webhook endpoint %s of this tenant", id)
		return
	}
	a.internalError(w, r, err)
}

// getWebhook serves GET /v1/admin/tenants/{tenant}/webhooks/{id}.
func (a *API) getWebhook(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	tenant, id, ok := a.webhookTarget(w, r)
	if !ok {
		return
	}
	e, err := webhooks.GetEndpoint(r.Context(), a.opt.DB, tenant, id)
	if err != nil {
		a.writeWebhookErr(w, r, id, err)
		return
	}
	httpjson.Write(w, http.StatusOK, e)
}

// webhookTarget reads the tenant (which must exist) and the endpoint id
// of a webhook endpoint's route, answering the error itself when either
// is wrong.
func (a *API) webhookTarget(w http.ResponseWriter, r *http.Request) (tenant, id string, ok bool) {
	if tenant, ok = a.tenantExists(w, r); !ok {
		return "", "", false
	}
	if id, ok = webhookID(w, r); !ok {
		return "", "", false
	}
	return tenant, id, true
}

// patchWebhook serves PATCH /v1/admin/tenants/{tenant}/webhooks/{id}.
func (a *API) patchWebhook(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	tenant, id, ok := a.webhookTarget(w, r)
	if !ok {
		return
	}
	var body webhookBody
	if _, err := decodeObjectWithoutNulls(r, &body); err != nil {
		writeBodyError(w, err)
		return
	}
	var saved webhooks.Endpoint
	var errs []fieldError
	err := a.inTx(r.Context(), func(tx pgx.Tx) error {
		before, err := webhooks.GetEndpoint(r.Context(), tx, tenant, id)
		if err != nil {
			return err
		}
		e := before
		if errs = a.applyWebhookBody(&e, body, false); len(errs) > 0 {
			return nil
		}
		if saved, err = webhooks.UpdateEndpoint(r.Context(), tx, e, a.opt.Now().UTC()); err != nil {
			return err
		}
		_, err = auditlog.Append(r.Context(), tx, auditlog.Entry{Actor: auditlog.KeyActor(p.KeyID), Action: "webhook.update",
			Target: notify.EndpointTarget(id), Before: endpointJSON(before), After: endpointJSON(saved)})
		return err
	})
	if err != nil {
		a.writeWebhookErr(w, r, id, err)
		return
	}
	if len(errs) > 0 {
		writeFieldErrors(w, "invalid_webhook", "invalid webhook endpoint", errs)
		return
	}
	httpjson.Write(w, http.StatusOK, saved)
}

// deleteWebhook serves DELETE /v1/admin/tenants/{tenant}/webhooks/{id}:
// the endpoint and its deliveries go.
func (a *API) deleteWebhook(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	tenant, id, ok := a.webhookTarget(w, r)
	if !ok {
		return
	}
	err := a.inTx(r.Context(), func(tx pgx.Tx) error {
		before, err := webhooks.DeleteEndpoint(r.Context(), tx, tenant, id)
		if err != nil {
			return err
		}
		_, err = auditlog.Append(r.Context(), tx, auditlog.Entry{Actor: auditlog.KeyActor(p.KeyID), Action: "webhook.delete",
			Target: notify.EndpointTarget(id), Before: endpointJSON(before)})
		return err
	})
	if err != nil {
		a.writeWebhookErr(w, r, id, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// rotateWebhookSecret serves POST .../webhooks/{id}/rotate-secret: a new
// secret, shown once; the previous one keeps signing for SecretOverlap.
func (a *API) rotateWebhookSecret(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	tenant, id, ok := a.webhookTarget(w, r)
	if !ok {
		return
	}
	secret, err := notify.NewSecret()
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	now := a.opt.Now().UTC()
	var saved webhooks.Endpoint
	err = a.inTx(r.Context(), func(tx pgx.Tx) error {
		before, err := webhooks.GetEndpoint(r.Context(), tx, tenant, id)
		if err != nil {
			return err
		}
		if saved, err = webhooks.RotateSecret(r.Context(), tx, tenant, id, secret, now.Add(SecretOverlap), now); err != nil {
			return err
		}
		// The audit row records that and when, never the secrets.
		_, err = auditlog.Append(r.Context(), tx, auditlog.Entry{Actor: auditlog.KeyActor(p.KeyID), Action: "webhook.rotate_secret",
			Target: notify.EndpointTarget(id), Before: endpointJSON(before), After: endpointJSON(saved)})
		return err
	})
	if err != nil {
		a.writeWebhookErr(w, r, id, err)
		return
	}
	httpjson.Write(w, http.StatusOK, webhookWithSecret{Endpoint: saved, Secret: saved.Secret})
}

// deliveryView is a delivery as the admin API shows it: with its body.
type deliveryView struct {
	webhooks.Delivery
	Event json.RawMessage `json:"event"`
}

// listWebhookDeliveries serves GET .../webhooks/{id}/deliveries.
func (a *API) listWebhookDeliveries(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	tenant, id, ok := a.webhookTarget(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	status := q.Get("status")
	if status != "" && !slices.Contains([]string{webhooks.StatusPending, webhooks.StatusDelivered, webhooks.StatusDead}, status) {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "status must be pending, delivered or dead; got %q", status)
		return
	}
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > webhooks.MaxList {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "limit must be an integer from 1 to %d", webhooks.MaxList)
			return
		}
		limit = n
	}
	if _, err := webhooks.GetEndpoint(r.Context(), a.opt.DB, tenant, id); err != nil {
		a.writeWebhookErr(w, r, id, err)
		return
	}
	ds, err := webhooks.ListDeliveries(r.Context(), a.opt.DB, webhooks.Filter{Tenant: tenant, EndpointID: id, Status: status, Limit: limit})
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	out := make([]deliveryView, len(ds))
	for i, d := range ds {
		out[i] = deliveryView{Delivery: d, Event: json.RawMessage(d.Body)}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"endpoint": id, "deliveries": out})
}

// redeliverWebhook serves POST /v1/admin/webhooks/deliveries/{id}/redeliver:
// the delivery is queued again, due now, with the same event id and body.
func (a *API) redeliverWebhook(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no webhook delivery %q", raw)
		return
	}
	db, ok := a.opt.DB.(interface {
		Begin(context.Context) (pgx.Tx, error)
	})
	if !ok {
		a.internalError(w, r, fmt.Errorf("the database handle %T cannot begin a transaction", a.opt.DB))
		return
	}
	if _, err := notify.Redeliver(r.Context(), db, notify.DefaultPolicy, []int64{id}, "", auditlog.KeyActor(p.KeyID), a.opt.Now().UTC()); err != nil {
		if errors.Is(err, webhooks.ErrNotFound) {
			httpjson.Errorf(w, http.StatusNotFound, "not_found", "no webhook delivery %d", id)
			return
		}
		a.internalError(w, r, err)
		return
	}
	d, err := webhooks.GetDelivery(r.Context(), a.opt.DB, id)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, deliveryView{Delivery: d, Event: json.RawMessage(d.Body)})
}
