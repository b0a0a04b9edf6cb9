package rollup

// This file administers the usage.events dead letters the rollup recorded:
// list them, replay them to usage.events (after the cause is fixed), or
// discard them. Every action is one transaction that changes the records'
// status, writes the replayed messages to the outbox, and records who did
// what in audit_log (one row per record); a record is replayed or discarded at most once.
// Replaying is safe even for events that were counted: the ledger counts
// an id once.

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/storage/deadletters"
	"github.com/usagemeter/metering/internal/storage/outbox"
	"github.com/usagemeter/metering/internal/topics"
)

// DeadLetter is one record of the usage dead-letter queue.
type DeadLetter struct {
	ID     int64  `json:"id"`
	Tenant string `json:"tenant"`
	// Kind is the record's kind: KindAdjustment for a record with the
	// header kind: adjustment, else KindEvent.
	Kind            string `json:"kind"`
	Error           string `json:"error"`
	ErrorClass      string `json:"error_class"`
	SourceTopic     string `json:"source_topic"`
	SourcePartition int    `json:"source_partition"`
	SourceOffset    int64  `json:"source_offset"`
	// Key and Payload are the record's raw bytes: as text when they are
	// UTF-8, else "hex:" and their hex digits. A null Kafka key or value
	// (a tombstone) is "" with KeyNull or PayloadNull set.
	Key         string     `json:"key"`
	KeyNull     bool       `json:"key_null,omitempty"`
	Payload     string     `json:"payload"`
	PayloadNull bool       `json:"payload_null,omitempty"`
	FailedAt    time.Time  `json:"failed_at"`
	Status      string     `json:"status"`
	ResolvedAt  *time.Time `json:"resolved_at,omitempty"`
}

// DeadLetters is the usage dead-letter queue.
type DeadLetters struct {
	pool *pgxpool.Pool
}

// NewDeadLetters returns the queue stored in pool's database.
func NewDeadLetters(pool *pgxpool.Pool) *DeadLetters { return &DeadLetters{pool: pool} }

// List returns records with status ("" for all), oldest first, at most
// limit. A key or payload that is not UTF-8 (or holds a NUL) is shown as
// "hex:" and its hex digits.
func (q *DeadLetters) List(ctx context.Context, status string, limit int) ([]DeadLetter, error) {
	letters, err := deadletters.ListUsage(ctx, q.pool, status, limit)
	if err != nil {
		return nil, err
	}
	recs := make([]DeadLetter, len(letters))
	for i, l := range letters {
		recs[i] = DeadLetter{
			ID: l.ID, Tenant: l.Tenant, Kind: recordKind(l.Headers), Error: l.Error, ErrorClass: l.ErrorClass, SourceTopic: l.SourceTopic,
			SourcePartition: l.SourcePartition, SourceOffset: l.SourceOffset,
			FailedAt: l.FailedAt, Status: l.Status, ResolvedAt: l.ResolvedAt,
		}
		recs[i].Key, recs[i].KeyNull = printable(l.Key)
		recs[i].Payload, recs[i].PayloadNull = printable(l.Payload)
	}
	return recs, nil
}

// printable shows raw bytes as text when they are UTF-8 without NUL, else
// as "hex:" and hex digits; it also says whether they were null.
func printable(b []byte) (string, bool) {
	if utf8.Valid(b) && !bytes.ContainsRune(b, 0) {
		return string(b), b == nil
	}
	return "hex:" + hex.EncodeToString(b), false
}

// ErrNothingPending is returned when none of the records named by id is
// pending. --all on an empty queue is not an error: it does nothing.
var ErrNothingPending = deadletters.ErrNoneWaiting

// Replay queues the pending records ids (all pending ones when all is
// true) for usage.events through the outbox, marks them replayed and
// audits the action. It returns the ids replayed. The original key and
// value bytes are published again; a tombstone goes out with an empty
// value (the outbox holds a value). Of the original headers only an
// adjustment's kind and signature headers are re-sent (see
// replayHeaders), so a replayed adjustment is verified again like any
// other; the dlq-replay-of header names the dead letter.
func (q *DeadLetters) Replay(ctx context.Context, ids []int64, all bool, actor, note string) ([]int64, error) {
	return q.resolve(ctx, "replay", "replayed", ids, all, actor, note, func(tx pgx.Tx, done []int64) error {
		payloads, err := deadletters.UsagePayloads(ctx, tx, done)
		if err != nil {
			return fmt.Errorf("queueing replays: %w", err)
		}
		msgs := make([]outbox.Message, len(payloads))
		for i, p := range payloads {
			// A null payload (tombstone) goes out empty.
			hs := replayHeaders(p.Headers)
			hs["dlq-replay-of"] = strconv.FormatInt(p.ID, 10)
			msgs[i] = outbox.Message{Topic: topics.UsageEvents, Key: p.Key, Value: p.Value, Headers: hs}
		}
		if err := outbox.Enqueue(ctx, tx, msgs...); err != nil {
			return fmt.Errorf("queueing replays: %w", err)
		}
		return nil
	})
}

// replayHeaders are the headers of a dead letter that its replay carries:
// the first kind header, and the signature headers, each byte for byte.
// The outbox keeps headers as JSON text, one value per name, so when a
// signature header is repeated, or one of them is not UTF-8 or holds a
// NUL, none is carried and the replay is an event (no kind header): it
// can then never be applied as an adjustment, whatever the aggregator
// allows.
func replayHeaders(hs []Header) map[string]string {
	out := map[string]string{}
	names := append([]string{HeaderKind}, recordsign.SignatureHeaders()...)
	seen := map[string]int{}
	for _, h := range hs {
		if !slices.Contains(names, h.Key) {
			continue
		}
		seen[h.Key]++
		if h.Key == HeaderKind && seen[h.Key] > 1 {
			continue // the first one decides the kind
		}
		if seen[h.Key] > 1 || !utf8.Valid(h.Value) || bytes.IndexByte(h.Value, 0) >= 0 {
			return map[string]string{}
		}
		out[h.Key] = string(h.Value)
	}
	return out
}

// Discard marks the pending records ids as discarded and audits it.
func (q *DeadLetters) Discard(ctx context.Context, ids []int64, actor, note string) ([]int64, error) {
	return q.resolve(ctx, "discard", "discarded", ids, false, actor, note, nil)
}

func (q *DeadLetters) resolve(ctx context.Context, action, status string, ids []int64, all bool, actor, note string, also func(pgx.Tx, []int64) error) ([]int64, error) {
	var done []int64
	err := pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		var err error
		done, err = deadletters.Apply(ctx, tx, deadletters.UsageQueue, deadletters.MoveUsage, deadletters.Change{Action: action, To: status, IDs: ids, All: all, Actor: actor, Note: note})
		if err != nil || len(done) == 0 || also == nil {
			return err
		}
		return also(tx, done)
	})
	if err != nil {
		return nil, err
	}
	return done, nil
}
