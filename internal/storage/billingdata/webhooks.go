package billingdata

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// RecordEvent records Stripe event id (of type typ, created at created,
// nil when unknown) as received, unless it was before; it reports whether
// it is new. Record its outcome in the same transaction (SetEventOutcome).
func RecordEvent(ctx context.Context, q storage.Executor, id, typ string, created *time.Time) (bool, error) {
	tag, err := q.Exec(ctx, `INSERT INTO stripe_webhook_events (event_id, type, created) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		id, typ, created)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// SetEventOutcome records the outcome of event id and the object it was
// about (nil when none).
func SetEventOutcome(ctx context.Context, q storage.Executor, id, outcome string, objectID *string) error {
	_, err := q.Exec(ctx, `UPDATE stripe_webhook_events SET outcome = $2, object_id = $3 WHERE event_id = $1`,
		id, outcome, objectID)
	return err
}

// RecordUndecodableEvent records Stripe event id as received with the
// outcome undecodable, unless it was before; it reports whether it is
// new. Keep its payload in the same transaction (RecordUndecodable).
func RecordUndecodableEvent(ctx context.Context, q storage.Executor, id, typ string, created *time.Time, objectID *string) (bool, error) {
	tag, err := q.Exec(ctx, `INSERT INTO stripe_webhook_events (event_id, type, created, object_id, outcome)
			VALUES ($1, $2, $3, $4, 'undecodable') ON CONFLICT DO NOTHING`,
		id, typ, created, objectID)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// RecordUndecodable keeps the exact payload Stripe signed of event id and
// why it cannot take effect.
func RecordUndecodable(ctx context.Context, q storage.Executor, id, typ string, created *time.Time, reason string, payload []byte) error {
	_, err := q.Exec(ctx, `INSERT INTO stripe_webhook_undecodable (event_id, type, created, reason, payload) VALUES ($1, $2, $3, $4, $5)`,
		id, typ, created, reason, payload)
	return err
}

// AdvanceObject moves Stripe object objectID (of objectType) to event
// eventID created at created if that is its latest event applied, by
// (created, event id); it reports false when a later one was applied. The
// row lock it takes, held until the transaction q ends, orders concurrent
// deliveries about one object.
func AdvanceObject(ctx context.Context, q storage.Executor, objectID, objectType string, created time.Time, eventID string) (bool, error) {
	var newest bool
	err := q.QueryRow(ctx, `INSERT INTO stripe_object_versions AS v (object_id, object_type, event_created, event_id)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (object_id) DO UPDATE SET event_created = excluded.event_created, event_id = excluded.event_id, updated_at = now()
			WHERE (excluded.event_created, excluded.event_id) >= (v.event_created, v.event_id)
		RETURNING true`, objectID, objectType, created, eventID).Scan(&newest)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return newest, nil
}

// RecordMeterError keeps Stripe's meter error report of event eventID.
func RecordMeterError(ctx context.Context, q storage.Executor, eventID, meter, summary string) error {
	_, err := q.Exec(ctx, `INSERT INTO stripe_meter_errors (event_id, meter, summary) VALUES ($1, $2, $3)`,
		eventID, meter, summary)
	return err
}
