package ingest

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/dlqapi"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/rollup"
)

// OutboxPublisher publishes the outbox's pending messages; *relay.Relay is
// one. After a replay ingest publishes at once, so the replayed records
// do not wait for the aggregator's relay (which would publish them too).
type OutboxPublisher interface {
	PublishPending(ctx context.Context) (int, error)
}

// usageDLQStatuses are the statuses GET /v1/admin/dlq/usage filters by.
var usageDLQStatuses = map[string]string{"": "pending", "pending": "pending", "replayed": "replayed", "discarded": "discarded", "all": ""}

// dlqRoutes are the usage dead-letter queue's routes: operators (admin
// and viewer keys) list and show, admins replay and discard with a note.
func (a *API) dlqRoutes() []Route {
	return []Route{
		{"GET", "/v1/admin/dlq/usage", a.gate.Operator(a.listUsageDLQ)},
		{"GET", "/v1/admin/dlq/usage/{id}", a.gate.Operator(a.showUsageDLQ)},
		{"POST", "/v1/admin/dlq/usage/{id}/replay", a.gate.Admin(a.replayUsageDLQ)},
		{"POST", "/v1/admin/dlq/usage/{id}/discard", a.gate.Admin(a.discardUsageDLQ)},
	}
}

// deadLetters answers 503 and returns nil when this API has no queue.
func (a *API) deadLetters(w http.ResponseWriter) *rollup.DeadLetters {
	if a.opt.DeadLetters == nil {
		httpjson.Error(w, http.StatusServiceUnavailable, "dlq_not_configured", "this ingest has no database access to the usage dead-letter queue")
	}
	return a.opt.DeadLetters
}

// listUsageDLQ serves GET /v1/admin/dlq/usage?status=&limit=.
func (a *API) listUsageDLQ(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	q := r.URL.Query()
	status, ok := usageDLQStatuses[q.Get("status")]
	if !ok {
		httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "status must be pending, replayed, discarded or all; got %q", q.Get("status"))
		return
	}
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "limit must be 1-1000; got %q", s)
			return
		}
		limit = n
	}
	dl := a.deadLetters(w)
	if dl == nil {
		return
	}
	recs, err := dl.List(r.Context(), status, limit)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	if recs == nil {
		recs = []rollup.DeadLetter{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"dead_letters": recs})
}

// showUsageDLQ serves GET /v1/admin/dlq/usage/{id}.
func (a *API) showUsageDLQ(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, ok := dlqapi.ParseID(w, r)
	if !ok {
		return
	}
	dl := a.deadLetters(w)
	if dl == nil {
		return
	}
	d, err := dl.Get(r.Context(), id)
	if errors.Is(err, rollup.ErrNoDeadLetter) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no usage dead letter %d", id)
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, d)
}

// replayUsageDLQ serves POST /v1/admin/dlq/usage/{id}/replay {"note"}:
// the record goes back to usage.events (through the outbox, in the
// transaction that marks it replayed and audits it).
func (a *API) replayUsageDLQ(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	a.resolveUsageDLQ(w, r, p, "replayed", func(ctx context.Context, dl *rollup.DeadLetters, id int64, actor, note string) ([]int64, error) {
		return dl.Replay(ctx, []int64{id}, false, actor, note)
	})
}

// discardUsageDLQ serves POST /v1/admin/dlq/usage/{id}/discard {"note"}.
func (a *API) discardUsageDLQ(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	a.resolveUsageDLQ(w, r, p, "discarded", func(ctx context.Context, dl *rollup.DeadLetters, id int64, actor, note string) ([]int64, error) {
		return dl.Discard(ctx, []int64{id}, actor, note)
	})
}

// publishTimeout bounds the publishing of a replay right after it.
const publishTimeout = 10 * time.Second

func (a *API) resolveUsageDLQ(w http.ResponseWriter, r *http.Request, p auth.Principal, status string,
	act func(context.Context, *rollup.DeadLetters, int64, string, string) ([]int64, error)) {
	id, ok := dlqapi.ParseID(w, r)
	if !ok {
		return
	}
	body, ok := dlqapi.DecodeAction(w, r)
	if !ok {
		return
	}
	dl := a.deadLetters(w)
	if dl == nil {
		return
	}
	_, err := act(r.Context(), dl, id, dlqapi.Actor(p.KeyID), body.Note)
	if errors.Is(err, rollup.ErrNothingPending) {
		d, gerr := dl.Get(r.Context(), id)
		switch {
		case errors.Is(gerr, rollup.ErrNoDeadLetter):
			httpjson.Errorf(w, http.StatusNotFound, "not_found", "no usage dead letter %d", id)
		case gerr != nil:
			a.internalError(w, r, gerr)
		default:
			httpjson.Errorf(w, http.StatusConflict, "not_pending", "usage dead letter %d is %s already: only a pending one can be replayed or discarded", id, d.Status)
		}
		return
	}
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	out := map[string]any{"id": id, "status": status}
	if status == "replayed" {
		out["published"] = a.publishOutbox(r.Context())
	}
	httpjson.Write(w, http.StatusOK, out)
}

// publishOutbox publishes the outbox now and says whether it emptied;
// when it could not, the aggregator's relay publishes the replay later.
func (a *API) publishOutbox(ctx context.Context) bool {
	if a.opt.Outbox == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	for range 100 {
		n, err := a.opt.Outbox.PublishPending(ctx)
		if err != nil {
			a.opt.Logger.WarnContext(ctx, "publishing a replayed dead letter; the aggregator's relay will retry", "err", err)
			return false
		}
		if n == 0 {
			return true
		}
	}
	return false
}
