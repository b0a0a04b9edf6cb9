package ingest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

const meterNameRule = `meter names are 1-128 characters of A-Z a-z 0-9 . _ : -, and not "." or ".."`

// putMeter serves PUT /v1/admin/meters/{meter}: the definition in the
// body, named by the path, is validated, checked against the names in use
// as metrics, and stored; 201 when the meter is new, 200 when it changed
// or was already so.
func (a *API) putMeter(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	name := r.PathValue("meter")
	var d meter.Definition
	if err := decodeObject(r, &d); err != nil {
		writeBodyError(w, err)
		return
	}
	if d.Name != "" && d.Name != name {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request",
			"the body names meter %q but the path %q; the path names the meter (leave \"name\" out of the body)", d.Name, name)
		return
	}
	d.Name = name
	if errs := d.Validate(); len(errs) > 0 {
		writeMeterErrors(w, errs)
		return
	}
	if msg, err := a.meterNameConflict(r, d); err != nil {
		a.internalError(w, r, err)
		return
	} else if msg != "" {
		httpjson.Error(w, http.StatusConflict, "name_conflict", msg)
		return
	}
	var saved accounts.Meter
	var created bool
	err := a.inTx(r.Context(), func(tx pgx.Tx) error {
		var before any
		prev, err := accounts.GetMeter(r.Context(), tx, d.Name)
		if err == nil {
			before = meterDoc(prev)
		} else if !errors.Is(err, accounts.ErrNotFound) {
			return err
		}
		saved, created, err = accounts.PutMeter(r.Context(), tx, accounts.Meter{
			Name: d.Name, Metric: d.Metric, Aggregation: string(d.Aggregation), GroupBy: d.GroupBy,
			Filter: d.Filter, Property: d.Property, Description: d.Description,
		})
		if err != nil || (!created && saved.Version == prev.Version) {
			return err // unchanged: nothing to audit
		}
		return appendAudit(r.Context(), tx, p, "meter.put", MeterTarget(d.Name), before, meterDoc(saved))
	})
	if errors.Is(err, accounts.ErrInvalidMeter) {
		// Validate refuses all the table refuses; this is the last line.
		httpjson.Error(w, http.StatusBadRequest, "invalid_meter", "the meter definition is refused: "+err.Error())
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	a.opt.Logger.InfoContext(r.Context(), "meter saved", "meter", saved.Name, "version", saved.Version, "created", created, "by", p.KeyID)
	a.writeMeter(w, r, status, saved)
}

// MeterTarget is the audit_log target of meter name.
func MeterTarget(name string) string { return "meter:" + name }

// meterDoc is a meter as meter.put audits it: as the API answers it.
func meterDoc(m accounts.Meter) json.RawMessage {
	b, err := meterJSON(m)
	if err != nil { // a stored meter always encodes; keep the error visible
		b, _ = json.Marshal(map[string]string{"name": m.Name, "error": err.Error()})
	}
	return b
}

// writeMeterErrors answers 400 for a definition Validate refused: the
// error every route answers, and every field error listed as a refused
// event batch lists them.
func writeMeterErrors(w http.ResponseWriter, errs []events.FieldError) {
	parts := make([]string, len(errs))
	for i, e := range errs {
		parts[i] = e.Field + ": " + e.Message
	}
	httpjson.Write(w, http.StatusBadRequest, struct {
		Error  httpjson.ErrorDetail `json:"error"`
		Errors []events.FieldError  `json:"errors"`
	}{httpjson.ErrorDetail{Code: "invalid_meter", Message: "invalid meter: " + strings.Join(parts, "; ")}, errs})
}

// meterNameConflict returns why d may not have its name ("" if it may).
// Meters and metrics share one namespace, since a metric's usage is kept
// as its implicit meter, named as the metric: a meter named as its own
// metric must be that implicit meter, and any other meter may not take a
// name in use as a metric (a metric of a plan's quota, or one whose
// implicit meter has counted usage) unless a meter of that name is
// already defined.
func (a *API) meterNameConflict(r *http.Request, d meter.Definition) (string, error) {
	if d.IsImplicit() {
		return "", nil // the meter every metric has, defined explicitly
	}
	if d.Name == d.Metric {
		msg := fmt.Sprintf("meter %q is named as its own metric, so it must be that metric's implicit meter (aggregation sum, no group_by, no filter, no property); give this definition another name", d.Name)
		if hint := d.Metric + "_" + string(d.Aggregation); validName(hint) {
			msg += fmt.Sprintf(", such as %q", hint)
		}
		return msg, nil
	}
	ctx := r.Context()
	if _, err := accounts.GetMeter(ctx, a.opt.DB, d.Name); err == nil {
		return "", nil // defined already: this changes it
	} else if !errors.Is(err, accounts.ErrNotFound) {
		return "", err
	}
	plans, err := accounts.PlansQuotingMetric(ctx, a.opt.DB, d.Name)
	if err != nil {
		return "", err
	}
	if len(plans) > 0 {
		return fmt.Sprintf("%q is a metric (plan %q has a quota of it), and meters share one namespace with metrics; choose another meter name", d.Name, plans[0]), nil
	}
	counted, err := usagedata.ImplicitMeterCounted(ctx, a.opt.DB, d.Name)
	if err != nil {
		return "", err
	}
	if counted {
		return fmt.Sprintf("%q is a metric (its usage is counted as the implicit meter of that name), and meters share one namespace with metrics; choose another meter name", d.Name), nil
	}
	return "", nil
}

func (a *API) getMeter(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	name := r.PathValue("meter")
	if !validName(name) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", meterNameRule)
		return
	}
	m, err := accounts.GetMeter(r.Context(), a.opt.DB, name)
	if errors.Is(err, accounts.ErrNotFound) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found",
			"no meter %q is defined (a metric's implicit meter, the sum of its values, is not stored); define one with PUT /v1/admin/meters/%s", name, name)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	a.writeMeter(w, r, http.StatusOK, m)
}

func (a *API) listMeters(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	ms, err := accounts.ListMeters(r.Context(), a.opt.DB)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	out := make([]json.RawMessage, len(ms))
	for i, m := range ms {
		if out[i], err = meterJSON(m); err != nil {
			a.internalError(w, r, err)
			return
		}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"meters": out})
}

func (a *API) writeMeter(w http.ResponseWriter, r *http.Request, status int, m accounts.Meter) {
	b, err := meterJSON(m)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, status, b)
}

// meterJSON is a stored meter as the API answers it: its definition as
// meter.Definition writes it, then version, created_at and updated_at.
func meterJSON(m accounts.Meter) (json.RawMessage, error) {
	def, err := meter.Definition{
		Name: m.Name, Metric: m.Metric, Aggregation: meter.Aggregation(m.Aggregation), GroupBy: m.GroupBy,
		Filter: m.Filter, Property: m.Property, Description: m.Description,
	}.MarshalJSON()
	if err != nil {
		return nil, err
	}
	b := append(def[:len(def)-1:len(def)-1], `,"version":`...) // def ends with its closing brace
	b = strconv.AppendInt(b, m.Version, 10)
	b = append(b, `,"created_at":"`...)
	b = m.CreatedAt.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","updated_at":"`...)
	b = m.UpdatedAt.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...), nil
}
