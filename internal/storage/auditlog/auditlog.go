// Package auditlog owns audit_log: one row per audited mutation (who, what,
// on what, the state before and after, and why), appended in the
// transaction of the change it records. Every mutation made through the
// admin API or an operator command writes one: plans, tenants, keys,
// meters, adjustments, grants, billing cycles and dead-letter actions.
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
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// Actor forms: an API key acts as KeyActor(id), an operator command as
// CLIActor(name).
const (
	KeyPrefix = "key:"
	CLIPrefix = "cli:"
)

// KeyActor is the actor of a request made with API key id.
func KeyActor(id string) string { return KeyPrefix + id }

// CLIActor is the actor of an operator command run by name (its --actor,
// or user@host).
func CLIActor(name string) string { return CLIPrefix + name }

// By is who makes a change and why: the actor and note of its audit row.
// The zero By audits nothing (a change made by the product itself, or a
// test's fixture).
type By struct {
	Actor string
	Note  string
}

// Audited reports whether b names an actor, so that changes made by it
// are audited.
func (b By) Audited() bool { return b.Actor != "" }

// Entry is one audited action. Before and After are JSON documents of the
// target's state (nil: none, as before a creation).
type Entry struct {
	Actor  string          `json:"actor"`
	Action string          `json:"action"`
	Target string          `json:"target"`
	Before json.RawMessage `json:"before"`
	After  json.RawMessage `json:"after"`
	// Note is why, as the actor said it ("" for nothing said).
	Note string `json:"note"`
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
	if err := e.check(); err != nil {
		return 0, err
	}
	var id int64
	if err := q.QueryRow(ctx, `INSERT INTO audit_log (actor, action, target, before, after, note) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
		e.Actor, e.Action, e.Target, jsonOrNil(e.Before), jsonOrNil(e.After), e.Note).Scan(&id); err != nil {
		return 0, fmt.Errorf("auditing %s of %s: %w", e.Action, e.Target, err)
	}
	return id, nil
}

// AppendAll records es in q in one statement, in their order (ids rise
// with it): one action on many records.
func AppendAll(ctx context.Context, q storage.Executor, es []Entry) error {
	if len(es) == 0 {
		return nil
	}
	cols := make([][]any, 6)
	for _, e := range es {
		if err := e.check(); err != nil {
			return err
		}
		for i, v := range []any{e.Actor, e.Action, e.Target, jsonOrNil(e.Before), jsonOrNil(e.After), e.Note} {
			cols[i] = append(cols[i], v)
		}
	}
	if _, err := q.Exec(ctx, `INSERT INTO audit_log (actor, action, target, before, after, note)
		SELECT actor, action, target, before, after, note
		FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::text[]) WITH ORDINALITY
			AS e (actor, action, target, before, after, note, n)
		ORDER BY n`, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5]); err != nil {
		return fmt.Errorf("auditing %s of %d records: %w", es[0].Action, len(es), err)
	}
	return nil
}

func (e Entry) check() error {
	if e.Actor == "" || e.Action == "" {
		return errors.New("auditing: an actor and an action are required")
	}
	return nil
}

// JSON encodes v as an audit document (nil stays nil).
func JSON(v any) (json.RawMessage, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding an audit document: %w", err)
	}
	return b, nil
}

func jsonOrNil(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

// Match is one filter of a listing: Value exact, or a prefix of the
// stored text when Prefix is set. The zero Match matches everything.
type Match struct {
	Value  string
	Prefix bool
}

// ParseMatch reads a filter as the API takes it: a value ending in "*" is
// a prefix (without the "*"), and so is one ending in any of
// prefixSeparators (no stored value ends so); any other is exact.
func ParseMatch(s, prefixSeparators string) Match {
	if v, ok := strings.CutSuffix(s, "*"); ok {
		return Match{Value: v, Prefix: true}
	}
	if s != "" && strings.ContainsAny(s[len(s)-1:], prefixSeparators) {
		return Match{Value: s, Prefix: true}
	}
	return Match{Value: s}
}

// pattern is m as a LIKE pattern, and whether it filters at all.
func (m Match) pattern() (string, bool) {
	if m.Value == "" { // exact "" is no filter; prefix "" matches all
		return "", false
	}
	p := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(m.Value)
	if m.Prefix {
		p += "%"
	}
	return p, true
}

// Filter selects entries: by actor, action and target (each exact or a
// prefix), At in [From, To) when set, and ids below Before (a cursor:
// the last id of the previous page) when not 0. Limit bounds the answer
// (MaxList when 0 or above it).
type Filter struct {
	Actor, Action, Target Match
	From, To              time.Time
	Before                int64
	Limit                 int
}

// MaxList is the most entries List answers.
const MaxList = 1000

// List returns the entries f selects, newest first (by id, the order they
// were appended in), and whether more follow the last one.
func List(ctx context.Context, q storage.Executor, f Filter) ([]Record, bool, error) {
	if f.Limit <= 0 || f.Limit > MaxList {
		f.Limit = MaxList
	}
	limit := f.Limit
	f.Limit++ // one more tells whether more follow
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	for _, c := range []struct {
		col string
		m   Match
	}{{"actor", f.Actor}, {"action", f.Action}, {"target", f.Target}} {
		p, ok := c.m.pattern()
		if !ok {
			continue
		}
		if c.m.Prefix {
			where = append(where, c.col+" LIKE "+arg(p))
		} else {
			where = append(where, c.col+" = "+arg(c.m.Value))
		}
	}
	if !f.From.IsZero() {
		where = append(where, "at >= "+arg(f.From))
	}
	if !f.To.IsZero() {
		where = append(where, "at < "+arg(f.To))
	}
	if f.Before > 0 {
		where = append(where, "id < "+arg(f.Before))
	}
	sql := `SELECT id, at, actor, action, target, before, after, note FROM audit_log`
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY id DESC LIMIT " + arg(f.Limit)
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, false, fmt.Errorf("listing the audit log: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) {
		var r Record
		var before, after []byte
		err := row.Scan(&r.ID, &r.At, &r.Actor, &r.Action, &r.Target, &before, &after, &r.Note)
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
		return nil, false, fmt.Errorf("listing the audit log: %w", err)
	}
	if len(out) > limit {
		return out[:limit], true, nil
	}
	return out, false, nil
}
