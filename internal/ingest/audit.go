package ingest

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/auditlog"
)

// appendAudit appends the audit_log row of action on target by the
// request's key p, in tx (the transaction of the change). before and
// after are encoded as JSON; nil is none.
func appendAudit(ctx context.Context, tx storage.Executor, p auth.Principal, action, target string, before, after any) error {
	b, err := auditlog.JSON(before)
	if err != nil {
		return err
	}
	a, err := auditlog.JSON(after)
	if err != nil {
		return err
	}
	_, err = auditlog.Append(ctx, tx, auditlog.Entry{Actor: auditlog.KeyActor(p.KeyID), Action: action, Target: target, Before: b, After: a})
	return err
}

// defaultAuditLimit is how many entries GET /v1/admin/audit answers
// without limit.
const defaultAuditLimit = 100

// listAudit serves GET /v1/admin/audit: the audit log, newest first,
// filtered by actor, action and target (each exact, or a prefix when it
// ends in "*", and action also when it ends in ".", target in ":"), by
// time (from inclusive, to exclusive) and paged by after (the previous
// page's next_after: entries older than that id).
func (a *API) listAudit(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	q := r.URL.Query()
	f := auditlog.Filter{
		Actor:  auditlog.ParseMatch(q.Get("actor"), ""),
		Action: auditlog.ParseMatch(q.Get("action"), "."),
		Target: auditlog.ParseMatch(q.Get("target"), ":"),
		Limit:  defaultAuditLimit,
	}
	empty := map[string]any{"entries": []auditlog.Record{}, "next_after": nil}
	for _, m := range []auditlog.Match{f.Actor, f.Action, f.Target} {
		if !storableText(m.Value) {
			// No stored actor, action or target holds such text: nothing matches.
			httpjson.Write(w, http.StatusOK, empty)
			return
		}
	}
	if v := q.Get("limit"); v != "" || q.Has("limit") {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > auditlog.MaxList {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "limit must be an integer from 1 to %d, got %q", auditlog.MaxList, v)
			return
		}
		f.Limit = n
	}
	if v := q.Get("after"); v != "" || q.Has("after") {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "after must be an entry id (a positive integer: the next_after of the previous page), got %q", v)
			return
		}
		f.Before = n
	}
	for _, t := range []struct {
		name string
		dst  *time.Time
	}{{"from", &f.From}, {"to", &f.To}} {
		v := q.Get(t.name)
		if v == "" && !q.Has(t.name) {
			continue
		}
		at, err := time.Parse(time.RFC3339, v)
		if err != nil {
			httpjson.Errorf(w, http.StatusBadRequest, "invalid_request", "%s must be an RFC 3339 time such as 2026-11-01T00:00:00Z, got %q", t.name, v)
			return
		}
		*t.dst = at
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		httpjson.Error(w, http.StatusBadRequest, "invalid_request", "from must be before to")
		return
	}
	entries, more, err := auditlog.List(r.Context(), a.opt.DB, f)
	if err != nil {
		a.internalError(w, r, err)
		return
	}
	var next any
	if more {
		next = entries[len(entries)-1].ID
	}
	if entries == nil {
		entries = []auditlog.Record{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"entries": entries, "next_after": next})
}
