// Package auditlog owns audit_log: one row per audited administrative
// action (who, what, on what, the state before and after), appended in
// the transaction of the change it records.
//
// Invariant: audit_log only grows. This package only inserts, and the
// table itself refuses UPDATE, DELETE and TRUNCATE with a trigger
// (migration 0018), whoever asks (TestAuditLogIsAppendOnly).
package auditlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// Entry is one audited action. Before and After are JSON documents of the
// target's state (nil: none, as before a creation).
type Entry struct {
	Actor  string          `json:"actor"`
	Action string          `json:"action"`
	Target string          `json:"target"`
	Before json.RawMessage `json:"before"`
	After  json.RawMessage `json:"after"`
}

// Record is an Entry as stored.
type Record struct {
	ID int64     `json:"id"`
	At time.Time `json:"at"`
	Entry
}

// Append records e in q (the transaction of the change it audits) and
// returns its id. Actor and Action are required.
func Append(ctx context.Context, q storage.Executor, e Entry) (int64, error) {
	if e.Actor == "" || e.Action == "" {
		return 0, errors.New("auditing: an actor and an action are required")
	}
	var id int64
	if err := q.QueryRow(ctx, `INSERT INTO audit_log (actor, action, target, before, after) VALUES ($1, $2, $3, $4, $5) RETURNING id`,
		e.Actor, e.Action, e.Target, jsonOrNil(e.Before), jsonOrNil(e.After)).Scan(&id); err != nil {
		return 0, fmt.Errorf("auditing %s of %s: %w", e.Action, e.Target, err)
	}
	return id, nil
}

func jsonOrNil(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

// Filter selects entries: by exact target and action when set; Limit
// bounds the answer (MaxList when 0 or above it).
type Filter struct {
	Target, Action string
	Limit          int
}

// MaxList is the most entries List answers.
const MaxList = 1000

// List returns the entries f selects, newest first (by id).
func List(ctx context.Context, q storage.Executor, f Filter) ([]Record, error) {
	if f.Limit <= 0 || f.Limit > MaxList {
		f.Limit = MaxList
	}
	rows, err := q.Query(ctx, `SELECT id, at, actor, action, target, before, after FROM audit_log
		WHERE ($1 = '' OR target = $1) AND ($2 = '' OR action = $2)
		ORDER BY id DESC LIMIT $3`, f.Target, f.Action, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("listing the audit log: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) {
		var r Record
		var before, after []byte
		err := row.Scan(&r.ID, &r.At, &r.Actor, &r.Action, &r.Target, &before, &after)
		r.At = r.At.UTC()
		if before != nil {
			r.Before = before
		}
		if after != nil {
			r.After = after
		}
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing the audit log: %w", err)
	}
	return out, nil
}
