package ingest

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// ConflictReader reads the conflicts the aggregator recorded (resends of
// a counted event's id with another payload) and its alerts;
// usagedata.ConflictReader is the one on Postgres.
type ConflictReader interface {
	List(ctx context.Context, f usagedata.ConflictFilter) ([]usagedata.Conflict, error)
	Alerting(ctx context.Context, tenant string, now time.Time) (bool, error)
}

// maxConflicts bounds one GET /v1/conflicts answer.
const maxConflicts = 200

// getConflicts answers GET /v1/conflicts?tenant=&status=: the tenant's
// conflicts, newest first, and whether it is beyond today's alert
// threshold.
func (a *API) getConflicts(w http.ResponseWriter, r *http.Request, tenant string) {
	status := r.URL.Query().Get("status")
	if status != "" && !slices.Contains(usagedata.ConflictStatuses, status) {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "status must be one of %s, got %q",
			strings.Join(usagedata.ConflictStatuses, ", "), status)
		return
	}
	if a.opt.Conflicts == nil {
		w.Header().Set("Retry-After", "60")
		httpjson.Error(w, http.StatusServiceUnavailable, "unavailable", "conflicts cannot be read on this server")
		return
	}
	cs, err := a.opt.Conflicts.List(r.Context(), usagedata.ConflictFilter{Tenant: tenant, Status: status, Limit: maxConflicts})
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	alerting, err := a.opt.Conflicts.Alerting(r.Context(), tenant, a.opt.Now())
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if cs == nil {
		cs = []usagedata.Conflict{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"tenant": tenant, "alerting": alerting, "conflicts": cs})
}
