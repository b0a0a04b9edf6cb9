package biller

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/dlqapi"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/periodclose"
	"github.com/usagemeter/metering/internal/stripesync"
)

// DLQRoutes are the billing dead-letter queue's routes (see Routes):
// admin and viewer keys list and show, admin keys replay and discard with
// a note.
var DLQRoutes = []string{
	"GET /v1/admin/dlq/billing",
	"GET /v1/admin/dlq/billing/{id}",
	"POST /v1/admin/dlq/billing/{id}/replay",
	"POST /v1/admin/dlq/billing/{id}/discard",
}

// MountAPI adds the biller's keyed routes to mux: GET /v1/reconciliation,
// the billing dead-letter queue (DLQRoutes) and held pushes (HoldRoutes), served by b and closer
// and authenticated by authn. Ingest forwards the same paths here
// (BILLER_URL) for the console.
func MountAPI(mux *http.ServeMux, authn *auth.Authenticator, b *stripesync.Biller, closer *periodclose.Closer, log *slog.Logger) {
	gate := auth.Gate{Auth: authn, Log: log}
	mux.HandleFunc(Routes[1], gate.Operator(reconciliation(b, closer, log)))
	d := dlqAPI{b: b, log: log}
	mux.HandleFunc(DLQRoutes[0], gate.Operator(d.list))
	mux.HandleFunc(DLQRoutes[1], gate.Operator(d.show))
	mux.HandleFunc(DLQRoutes[2], gate.Admin(d.replay))
	mux.HandleFunc(DLQRoutes[3], gate.Admin(d.discard))
	mountHolds(mux, gate, d)
}

type dlqAPI struct {
	b   *stripesync.Biller
	log *slog.Logger
}

// list serves GET /v1/admin/dlq/billing: the pushes in the DLQ, oldest
// first.
func (d dlqAPI) list(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	dead, err := d.b.DeadLetters(r.Context())
	if err != nil {
		d.internal(w, r, err)
		return
	}
	if dead == nil {
		dead = []stripesync.DeadPush{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"dead_letters": dead})
}

// show serves GET /v1/admin/dlq/billing/{id}: a push of the DLQ, or one
// that left it.
func (d dlqAPI) show(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	id, ok := dlqapi.ParseID(w, r)
	if !ok {
		return
	}
	push, err := d.b.DeadLetter(r.Context(), id)
	if errors.Is(err, stripesync.ErrNotDead) {
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no push %d", id)
		return
	}
	if err != nil {
		d.internal(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, push)
}

// replay serves POST /v1/admin/dlq/billing/{id}/replay {"note"}: the push
// is sent to Stripe again now, under its identifier (or checked against
// Stripe's summaries first when older than stripesync.DedupHorizon).
func (d dlqAPI) replay(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	id, body, ok := d.action(w, r)
	if !ok {
		return
	}
	actor := dlqapi.Actor(p.KeyID)
	d.log.InfoContext(r.Context(), "replaying a billing dead letter", "id", id, "actor", actor, "note", body.Note)
	res, err := d.b.ReplayWithNote(r.Context(), []int64{id}, false, actor, body.Note)
	if d.refused(w, r, id, err) {
		return
	}
	d.answer(w, r, id, map[string]any{"sent": res.Sent, "dead": res.Dead, "landed": res.Landed, "replaced": res.Replaced, "waiting": res.Waiting})
}

// discard serves POST /v1/admin/dlq/billing/{id}/discard {"note"}: the
// push is closed unsent; its usage stays claimed and shows as drift.
func (d dlqAPI) discard(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	id, body, ok := d.action(w, r)
	if !ok {
		return
	}
	_, err := d.b.Discard(r.Context(), []int64{id}, dlqapi.Actor(p.KeyID), body.Note)
	if d.refused(w, r, id, err) {
		return
	}
	d.answer(w, r, id, map[string]any{})
}

func (d dlqAPI) action(w http.ResponseWriter, r *http.Request) (int64, dlqapi.Action, bool) {
	id, ok := dlqapi.ParseID(w, r)
	if !ok {
		return 0, dlqapi.Action{}, false
	}
	body, ok := dlqapi.DecodeAction(w, r)
	return id, body, ok
}

// refused answers the error of a replay or discard and returns true when
// err is not nil: 404 for an unknown push, 409 for one not in the DLQ.
func (d dlqAPI) refused(w http.ResponseWriter, r *http.Request, id int64, err error) bool {
	if err == nil {
		return false
	}
	if !errors.Is(err, stripesync.ErrNotDead) {
		d.internal(w, r, err)
		return true
	}
	push, gerr := d.b.DeadLetter(r.Context(), id)
	switch {
	case errors.Is(gerr, stripesync.ErrNotDead):
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no push %d", id)
	case gerr != nil:
		d.internal(w, r, gerr)
	default:
		httpjson.Errorf(w, http.StatusConflict, "not_dead", "push %d is %s, not in the billing DLQ: only a dead push can be replayed or discarded", id, push.Status)
	}
	return true
}

// answer writes out with the push's id and status after the action.
func (d dlqAPI) answer(w http.ResponseWriter, r *http.Request, id int64, out map[string]any) {
	push, err := d.b.DeadLetter(r.Context(), id)
	if err != nil {
		d.internal(w, r, err)
		return
	}
	out["id"], out["status"] = id, push.Status
	httpjson.Write(w, http.StatusOK, out)
}

func (d dlqAPI) internal(w http.ResponseWriter, r *http.Request, err error) {
	// The error may name Stripe's or Postgres's address: the log only.
	d.log.ErrorContext(r.Context(), "billing DLQ request failed", "route", r.Pattern, "err", err)
	httpjson.Error(w, http.StatusInternalServerError, "internal", "the biller failed to complete the request; it was logged")
}
