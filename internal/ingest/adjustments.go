package ingest

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// RecordWriter writes records to Kafka and returns nil only once Kafka
// acknowledged every one (kafkalog.Writer is one).
type RecordWriter interface {
	Write(ctx context.Context, recs ...record.Record) error
}

// adjustmentTimeout bounds the wait for Kafka's acknowledgement of one
// adjustment.
const adjustmentTimeout = 10 * time.Second

// adjustmentRoutes are the admin routes of usage adjustments.
func (a *API) adjustmentRoutes() []Route {
	return []Route{
		{"POST", "/v1/admin/adjustments", a.gate.Admin(a.postAdjustment)},
		{"GET", "/v1/admin/adjustments", a.gate.Admin(a.listAdjustments)},
	}
}

// AdjustmentTarget is the audit_log target of adjustment id.
func AdjustmentTarget(id string) string { return "adjustment:" + id }

// postAdjustment checks an adjustment and puts it on usage.events as an
// adjustment record; 202 once Kafka acknowledged it. The aggregator
// applies it (or dead-letters it, should the meter change meanwhile).
func (a *API) postAdjustment(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var adj rollup.Adjustment // the body, as the aggregator applies it
	present, err := decodeObjectWithoutNulls(r, &adj)
	if err != nil {
		writeBodyError(w, err)
		return
	}
	if present["id"] && adj.ID == "" {
		httpjson.Error(w, http.StatusBadRequest, "invalid_adjustment", "id must be a UUID such as 8d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09, or left out")
		return
	}
	if adj.ID == "" {
		adj.ID = uuid.NewString()
	}
	if adj.Group == nil {
		adj.Group = map[string]string{}
	}
	if err := adj.Validate(); err != nil {
		httpjson.Error(w, http.StatusBadRequest, "invalid_adjustment", err.Error())
		return
	}
	ctx := r.Context()
	if _, err := a.opt.Store.Tenant(ctx, adj.Tenant); errors.Is(err, accounts.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "unknown_tenant", "no tenant %q", adj.Tenant)
		return
	} else if err != nil {
		a.internalError(w, r, err)
		return
	}
	m, err := accounts.GetMeter(ctx, a.opt.DB, adj.Meter)
	switch {
	case err == nil:
		if _, gerr := adj.GroupKey(m.Definition()); gerr != nil {
			httpjson.Error(w, http.StatusBadRequest, "invalid_adjustment", gerr.Error())
			return
		}
	case errors.Is(err, accounts.ErrNotFound):
		if len(adj.Group) > 0 {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_adjustment", "meter %q is a metric's implicit meter, which has no groups: send \"group\": {}", adj.Meter)
			return
		}
		used, uerr := usagedata.MeterHasUsage(ctx, a.opt.DB, adj.Tenant, adj.Meter)
		if uerr != nil {
			a.internalError(w, r, uerr)
			return
		}
		if !used {
			httpjson.Errorf(w, http.StatusNotFound, "unknown_meter", "no meter %q is defined and tenant %q has no usage of a metric of that name", adj.Meter, adj.Tenant)
			return
		}
	default:
		a.internalError(w, r, err)
		return
	}
	if a.opt.Adjustments == nil {
		httpjson.Error(w, http.StatusServiceUnavailable, "unavailable", "this server cannot write adjustments to Kafka")
		return
	}
	var rec record.Record
	switch {
	case a.opt.AdjustmentKeys.Len() > 0:
		rec, err = adj.SignedRecord(a.opt.AdjustmentKeys, a.opt.Now())
	case a.opt.AllowUnsignedAdjustments:
		rec, err = adj.Record()
	default:
		// The aggregator would dead-letter an unsigned adjustment: refuse
		// it here, where the caller sees why.
		httpjson.Error(w, http.StatusServiceUnavailable, "adjustments_not_configured",
			"this server has no ADJUSTMENT_SIGNING_KEYS to sign adjustments with; ask the operator to configure them")
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	// The audit row commits only once Kafka acknowledged the record; a
	// resend of an adjustment audited already (same id) adds none.
	var kafkaErr error
	err = a.inTx(ctx, func(tx pgx.Tx) error {
		target := AdjustmentTarget(adj.ID)
		seen, _, err := auditlog.List(ctx, tx, auditlog.Filter{Action: auditlog.Match{Value: "adjustment.create"}, Target: auditlog.Match{Value: target}, Limit: 1})
		if err != nil {
			return err
		}
		if len(seen) == 0 {
			if err := appendAudit(ctx, tx, p, "adjustment.create", target, nil, adj); err != nil {
				return err
			}
		}
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), adjustmentTimeout)
		defer cancel()
		if kafkaErr = a.opt.Adjustments.Write(wctx, rec); kafkaErr != nil {
			return kafkaErr
		}
		return nil
	})
	if kafkaErr != nil {
		a.opt.Logger.WarnContext(ctx, "adjustment not acknowledged by Kafka", "id", adj.ID, "err", kafkaErr)
		httpjson.Error(w, http.StatusServiceUnavailable, "unavailable", "Kafka did not acknowledge the adjustment; send it again with the same id")
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusAccepted, struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}{adj.ID, "accepted"})
}

// listAdjustments answers GET /v1/admin/adjustments?tenant=&period=: the
// adjustments applied, of a tenant (or every tenant) and of the period a
// month names, as an adjustment's period does (or every period).
func (a *API) listAdjustments(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	q := r.URL.Query()
	tenant := q.Get("tenant")
	if q.Has("tenant") && !validName(tenant) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", tenantNameRule)
		return
	}
	var list []usagedata.Adjustment
	var err error
	if p := q.Get("period"); q.Has("period") {
		month, perr := rollup.Adjustment{Period: p}.PeriodStart()
		if perr != nil {
			httpjson.Error(w, http.StatusBadRequest, "invalid_request", perr.Error())
			return
		}
		list, err = usagedata.AdjustmentsOfMonth(r.Context(), a.opt.DB, tenant, month)
	} else {
		list, err = usagedata.ListAdjustments(r.Context(), a.opt.DB, tenant, time.Time{}, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC))
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if list == nil {
		list = []usagedata.Adjustment{}
	}
	httpjson.Write(w, http.StatusOK, struct {
		Adjustments []usagedata.Adjustment `json:"adjustments"`
	}{list})
}
