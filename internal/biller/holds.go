package biller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/dlqapi"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/stripesync"
)

// HoldRoutes are the routes of pushes held on anomalies (see Routes):
// admin and viewer keys list them, admin keys approve and reject them
// with a note. Ingest forwards them here like DLQRoutes.
var HoldRoutes = []string{
	"GET /v1/admin/holds",
	"POST /v1/admin/holds/{id}/approve",
	"POST /v1/admin/holds/{id}/reject",
}

// mountHolds adds HoldRoutes to mux.
func mountHolds(mux *http.ServeMux, gate auth.Gate, d dlqAPI) {
	h := holdAPI{d}
	mux.HandleFunc(HoldRoutes[0], gate.Operator(h.list))
	mux.HandleFunc(HoldRoutes[1], gate.Admin(h.approve))
	mux.HandleFunc(HoldRoutes[2], gate.Admin(h.reject))
}

type holdAPI struct{ dlqAPI }

// list serves GET /v1/admin/holds: the held pushes, oldest first.
func (h holdAPI) list(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	held, err := h.b.Holds(r.Context())
	if err != nil {
		h.internal(w, r, err)
		return
	}
	if held == nil {
		held = []stripesync.HeldPush{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"holds": held})
}

// approve serves POST /v1/admin/holds/{id}/approve {"note"}: the push is
// released and sent at once under its identifier.
func (h holdAPI) approve(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	h.decide(w, r, p, "approve", h.b.ApproveHold)
}

// reject serves POST /v1/admin/holds/{id}/reject {"note"}: the push is
// discarded, never sent; its usage stays claimed and shows as drift.
func (h holdAPI) reject(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	h.decide(w, r, p, "reject", h.b.RejectHold)
}

func (h holdAPI) decide(w http.ResponseWriter, r *http.Request, p auth.Principal, verb string,
	act func(ctx context.Context, id int64, actor, note string) (stripesync.SendResult, error)) {
	id, body, ok := h.action(w, r)
	if !ok {
		return
	}
	actor := dlqapi.Actor(p.KeyID)
	h.log.InfoContext(r.Context(), "deciding a held push", "id", id, "decision", verb, "actor", actor, "note", body.Note)
	res, err := act(r.Context(), id, actor, body.Note)
	switch {
	case errors.Is(err, stripesync.ErrNoHeldPush):
		httpjson.Errorf(w, http.StatusNotFound, "not_found", "no push %d", id)
		return
	case errors.Is(err, stripesync.ErrNotHeld):
		push, gerr := h.b.Hold(r.Context(), id)
		if gerr != nil {
			h.internal(w, r, gerr)
			return
		}
		httpjson.Errorf(w, http.StatusConflict, "not_held", "push %d is %s, not held: only a held push can be approved or rejected", id, push.Status)
		return
	case err != nil:
		h.internal(w, r, err)
		return
	}
	push, err := h.b.Hold(r.Context(), id)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"id": id, "status": push.Status, "sent": res.Sent, "dead": res.Dead})
}

// holdsList runs `biller holds list [--format json]`.
func holdsList(ctx context.Context, env Env, f listFlags, args []string) error {
	return runList(ctx, env, f, args, list[stripesync.HeldPush]{
		header: "ID\tHELD SINCE\tTENANT\tMETER\tPERIOD\tVALUE\tWAITING\tREASON",
		row: func(h stripesync.HeldPush) string {
			return fmt.Sprintf("%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s", h.ID, h.HeldSince.UTC().Format(time.RFC3339), terminalText(h.Tenant, 64),
				terminalText(h.Metric, 64), h.Period, h.Value, h.Waiting, terminalText(h.Reason, 100))
		},
		counted: "%d pushes held for approval",
	}, (*stripesync.Biller).Holds)
}

// holdsApprove runs `biller holds approve ID --note TEXT [--actor NAME]`.
func holdsApprove(ctx context.Context, env Env, f cli.Audit, args []string) error {
	return holdsDecide(ctx, env, f, args, "approved", (*stripesync.Biller).ApproveHold)
}

// holdsReject runs `biller holds reject ID --note TEXT [--actor NAME]`.
func holdsReject(ctx context.Context, env Env, f cli.Audit, args []string) error {
	return holdsDecide(ctx, env, f, args, "rejected", (*stripesync.Biller).RejectHold)
}

func holdsDecide(ctx context.Context, env Env, f cli.Audit, args []string, done string,
	act func(b *stripesync.Biller, ctx context.Context, id int64, actor, note string) (stripesync.SendResult, error)) error {
	ids, err := cli.IDs(args, "push")
	if err != nil {
		return err
	}
	if len(ids) != 1 {
		return errors.New("name one held push by id")
	}
	if err := dlqapi.CheckNote(f.Note); err != nil {
		return errors.New("--note is required: it goes to the audit trail")
	}
	b, closeFn, err := open(ctx, env.Config, env.Log)
	if err != nil {
		return err
	}
	defer closeFn()
	res, err := act(b, ctx, ids[0], f.Who(), f.Note)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Out, "push %d %s; sent now: %d (with the pushes that waited behind it), back in the billing DLQ: %d\n", ids[0], done, res.Sent, res.Dead)
	return nil
}
