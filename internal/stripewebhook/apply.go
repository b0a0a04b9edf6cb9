package stripewebhook

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/windows"
)

// apply records ev and its effect in one transaction and returns its
// outcome. A *contentError rolls everything back: the caller records the
// event as undecodable instead.
func (h *Handler) apply(ctx context.Context, ev *event) (string, error) {
	outcome := Processed
	err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO stripe_webhook_events (event_id, type, created) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
			ev.ID, printable(ev.Type, 200), nullTime(ev.Created))
		if err != nil {
			return contentOrFailure(err, "recording the event")
		}
		if tag.RowsAffected() == 0 {
			outcome = Duplicate
			return nil
		}
		switch ev.Type {
		case "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted":
			outcome, err = h.subscription(ctx, tx, ev)
		case "invoice.finalized":
			err = h.invoiceFinalized(ctx, tx, *ev)
		case "billing.meter.error_report_triggered":
			err = h.meterErrorReport(ctx, tx, *ev)
		default:
			outcome = Ignored
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE stripe_webhook_events SET outcome = $2, object_id = $3 WHERE event_id = $1`,
			ev.ID, outcome, nullString(ev.ObjectID))
		return err
	})
	return outcome, err
}

// subscription sets the plan of the tenants mapped to the subscription's
// customer, unless a later event about this subscription was applied.
func (h *Handler) subscription(ctx context.Context, tx pgx.Tx, ev *event) (string, error) {
	var sub struct {
		ID       string            `json:"id"`
		Customer string            `json:"customer"`
		Status   string            `json:"status"`
		Metadata map[string]string `json:"metadata"`
	}
	if err := decodeObject(*ev, &sub); err != nil {
		return "", err
	}
	if !stripeID.MatchString(sub.ID) {
		return "", undecodable("subscription id %q is not a Stripe id", sub.ID)
	}
	ev.ObjectID, ev.ObjectType = sub.ID, "subscription"
	if ev.Created.IsZero() {
		return "", undecodable("event without created: it cannot be ordered")
	}
	if newest, err := advance(ctx, tx, *ev); err != nil {
		return "", err
	} else if !newest {
		return Stale, nil
	}
	if !stripeID.MatchString(sub.Customer) {
		return "", undecodable("subscription %s: customer %q is not a Stripe customer id", sub.ID, sub.Customer)
	}
	var plan *string
	if ev.Type != "customer.subscription.deleted" && sub.Status != "canceled" {
		p := sub.Metadata[PlanMetadataKey]
		if p == "" {
			return "", undecodable("subscription %s (%s) has no metadata.%s naming the tenant's plan", sub.ID, sub.Status, PlanMetadataKey)
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM plans WHERE name = $1)`, p).Scan(&exists); err != nil {
			return "", contentOrFailure(err, "looking up the plan")
		}
		if !exists {
			return "", undecodable("subscription %s names plan %q, which is not defined here: define it (PUT /v1/admin/plans/{plan}) and resend the event", sub.ID, p)
		}
		plan = &p
	}
	tag, err := tx.Exec(ctx, `UPDATE tenants SET plan = $2, updated_at = now() WHERE stripe_customer_id = $1`, sub.Customer, plan)
	if err != nil {
		return "", contentOrFailure(err, "updating the tenant's plan")
	}
	if tag.RowsAffected() == 0 {
		return "", undecodable("subscription %s: no tenant has stripe_customer_id %q", sub.ID, sub.Customer)
	}
	return Processed, nil
}

// advance moves ev's object to ev if ev is the latest event applied to it,
// by (created, event id); it reports false when a later one was applied.
// The row lock taken here orders concurrent deliveries about one object.
func advance(ctx context.Context, tx pgx.Tx, ev event) (bool, error) {
	var newest bool
	err := tx.QueryRow(ctx, `INSERT INTO stripe_object_versions AS v (object_id, object_type, event_created, event_id)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (object_id) DO UPDATE SET event_created = excluded.event_created, event_id = excluded.event_id, updated_at = now()
			WHERE (excluded.event_created, excluded.event_id) >= (v.event_created, v.event_id)
		RETURNING true`, ev.ObjectID, ev.ObjectType, ev.Created, ev.ID).Scan(&newest)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, contentOrFailure(err, "ordering the event")
	}
	return newest, nil
}

// invoiceFinalized closes the invoice's month for the customer's tenants.
// Ordering does not matter here: an invoice is finalized once, and the
// first finalized invoice of a month closes it (insert-if-absent).
func (h *Handler) invoiceFinalized(ctx context.Context, tx pgx.Tx, ev event) error {
	var inv struct {
		ID          string `json:"id"`
		Customer    string `json:"customer"`
		PeriodStart int64  `json:"period_start"`
	}
	if err := decodeObject(ev, &inv); err != nil {
		return err
	}
	switch {
	case !stripeID.MatchString(inv.ID):
		return undecodable("invoice id %q is not a Stripe id", inv.ID)
	case !stripeID.MatchString(inv.Customer):
		return undecodable("invoice %s: customer %q is not a Stripe customer id", inv.ID, inv.Customer)
	case inv.PeriodStart <= 0:
		return undecodable("invoice %s without period_start", inv.ID)
	}
	var tenants int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM tenants WHERE stripe_customer_id = $1`, inv.Customer).Scan(&tenants); err != nil {
		return contentOrFailure(err, "looking up the customer's tenants")
	}
	if tenants == 0 {
		return undecodable("invoice %s: no tenant has stripe_customer_id %q", inv.ID, inv.Customer)
	}
	period := windows.Month.Start(time.Unix(inv.PeriodStart, 0))
	_, err := tx.Exec(ctx, `INSERT INTO billing_periods (tenant, period_start, invoice_id)
		SELECT tenant, $2, $3 FROM tenants WHERE stripe_customer_id = $1
		ON CONFLICT (tenant, period_start) DO NOTHING`, inv.Customer, period, inv.ID)
	return contentOrFailure(err, "closing the month")
}

// meterErrorReport keeps Stripe's report for people; each is its own row,
// so ordering does not matter.
func (h *Handler) meterErrorReport(ctx context.Context, tx pgx.Tx, ev event) error {
	var rep struct {
		Meter   string `json:"meter"`
		Summary string `json:"summary"`
		Reason  struct {
			ErrorCount int `json:"error_count"`
		} `json:"reason"`
	}
	if err := decodeObject(ev, &rep); err != nil {
		return err
	}
	h.log.WarnContext(ctx, "Stripe reported meter errors", "meter", rep.Meter, "summary", rep.Summary, "errors", rep.Reason.ErrorCount)
	_, err := tx.Exec(ctx, `INSERT INTO stripe_meter_errors (event_id, meter, summary) VALUES ($1, $2, $3)`,
		ev.ID, printable(rep.Meter, 255), printable(fmt.Sprintf("%s (%d errors)", rep.Summary, rep.Reason.ErrorCount), 4096))
	return contentOrFailure(err, "recording the meter error report")
}

// recordUndecodable acknowledges a signed event that cannot take effect:
// it is kept with its reason and the exact bytes Stripe signed, and its
// object (when known) is moved to it, so that an older event about the
// same object does not take effect after it either.
func (h *Handler) recordUndecodable(ctx context.Context, ev event, payload []byte, reason error) (string, error) {
	outcome := RecordedUndecodable
	why := printable(reason.Error(), 4096)
	err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO stripe_webhook_events (event_id, type, created, object_id, outcome)
			VALUES ($1, $2, $3, $4, 'undecodable') ON CONFLICT DO NOTHING`,
			ev.ID, printable(ev.Type, 200), nullTime(ev.Created), nullString(ev.ObjectID))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			outcome = Duplicate
			return nil
		}
		if ev.ObjectID != "" && !ev.Created.IsZero() {
			if _, err := advance(ctx, tx, ev); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO stripe_webhook_undecodable (event_id, type, created, reason, payload) VALUES ($1, $2, $3, $4, $5)`,
			ev.ID, printable(ev.Type, 200), nullTime(ev.Created), why, payload)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("recording undecodable event %s: %w", ev.ID, err)
	}
	if outcome == RecordedUndecodable {
		h.log.WarnContext(ctx, "webhook recorded as undecodable: see stripe_webhook_undecodable", "event", ev.ID, "type", printable(ev.Type, 200), "reason", why)
	}
	return outcome, nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
