// Package stripewebhook receives Stripe webhooks: subscription changes
// move tenants between plans, a finalized invoice closes the tenant's
// billing month, and meter error reports are recorded for people.
//
// Invariant: nothing changes unless the Stripe-Signature verifies with
// STRIPE_WEBHOOK_SECRET; each event id takes effect at most once (Stripe
// delivers at least once), in the same transaction as its effect.
package stripewebhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v79"
	"github.com/stripe/stripe-go/v79/webhook"

	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/windows"
)

// PlanMetadataKey is the subscription metadata key naming the tenant's plan.
const PlanMetadataKey = "plan"

// Handler serves POST /webhooks/stripe.
type Handler struct {
	pool   *pgxpool.Pool
	secret string
	log    *slog.Logger
}

// New returns a handler verifying signatures with secret.
func New(pool *pgxpool.Pool, secret string, log *slog.Logger) *Handler {
	return &Handler{pool: pool, secret: secret, log: log}
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.secret == "" {
		httpjson.Error(w, http.StatusServiceUnavailable, "not_configured", "STRIPE_WEBHOOK_SECRET is not set; webhooks are refused")
		return
	}
	payload, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, "malformed_body", "reading the body: "+err.Error())
		return
	}
	ev, err := webhook.ConstructEventWithOptions(payload, r.Header.Get("Stripe-Signature"), h.secret,
		webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true})
	if err != nil {
		h.log.WarnContext(r.Context(), "webhook refused", "err", err)
		httpjson.Error(w, http.StatusBadRequest, "invalid_signature", "the Stripe-Signature header does not verify: "+err.Error())
		return
	}
	outcome, err := h.apply(r.Context(), ev)
	if err != nil {
		// 500 makes Stripe deliver it again later.
		h.log.ErrorContext(r.Context(), "webhook failed", "event", ev.ID, "type", ev.Type, "err", err)
		httpjson.Error(w, http.StatusInternalServerError, "internal", "the event could not be applied; Stripe will retry it")
		return
	}
	h.log.InfoContext(r.Context(), "webhook", "event", ev.ID, "type", ev.Type, "outcome", outcome)
	httpjson.Write(w, http.StatusOK, map[string]string{"status": outcome})
}

// apply records ev and its effect in one transaction; it returns
// "processed", "ignored" or "duplicate".
func (h *Handler) apply(ctx context.Context, ev stripe.Event) (string, error) {
	outcome := "processed"
	err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO stripe_webhook_events (event_id, type) VALUES ($1, $2) ON CONFLICT DO NOTHING`, ev.ID, string(ev.Type))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			outcome = "duplicate"
			return nil
		}
		if ev.Data == nil {
			outcome = "ignored"
			return nil
		}
		switch ev.Type {
		case "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted":
			return h.subscription(ctx, tx, ev)
		case "invoice.finalized":
			return h.invoiceFinalized(ctx, tx, ev)
		case "billing.meter.error_report_triggered":
			var rep struct {
				Meter   string `json:"meter"`
				Summary string `json:"summary"`
				Reason  struct {
					ErrorCount int `json:"error_count"`
				} `json:"reason"`
			}
			if err := json.Unmarshal(ev.Data.Raw, &rep); err != nil {
				return fmt.Errorf("decoding meter error report: %w", err)
			}
			h.log.WarnContext(ctx, "Stripe reported meter errors", "meter", rep.Meter, "summary", rep.Summary, "errors", rep.Reason.ErrorCount)
			_, err := tx.Exec(ctx, `INSERT INTO stripe_meter_errors (event_id, meter, summary) VALUES ($1, $2, $3)`,
				ev.ID, rep.Meter, fmt.Sprintf("%s (%d errors)", rep.Summary, rep.Reason.ErrorCount))
			return err
		default:
			outcome = "ignored"
			return nil
		}
	})
	return outcome, err
}

func (h *Handler) subscription(ctx context.Context, tx pgx.Tx, ev stripe.Event) error {
	var sub struct {
		Customer string            `json:"customer"`
		Status   string            `json:"status"`
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(ev.Data.Raw, &sub); err != nil {
		return fmt.Errorf("decoding subscription: %w", err)
	}
	var plan *string
	if p := sub.Metadata[PlanMetadataKey]; p != "" && ev.Type != "customer.subscription.deleted" && sub.Status != "canceled" {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM plans WHERE name = $1)`, p).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			h.log.WarnContext(ctx, "subscription names an unknown plan; tenant left unchanged", "customer", sub.Customer, "plan", p)
			return nil
		}
		plan = &p
	}
	tag, err := tx.Exec(ctx, `UPDATE tenants SET plan = $2, updated_at = now() WHERE stripe_customer_id = $1`, sub.Customer, plan)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		h.log.WarnContext(ctx, "subscription of a customer no tenant maps to", "customer", sub.Customer)
	}
	return nil
}

func (h *Handler) invoiceFinalized(ctx context.Context, tx pgx.Tx, ev stripe.Event) error {
	var inv struct {
		ID          string `json:"id"`
		Customer    string `json:"customer"`
		PeriodStart int64  `json:"period_start"`
	}
	if err := json.Unmarshal(ev.Data.Raw, &inv); err != nil {
		return fmt.Errorf("decoding invoice: %w", err)
	}
	if inv.PeriodStart == 0 {
		return errors.New("invoice without period_start")
	}
	period := windows.Month.Start(time.Unix(inv.PeriodStart, 0))
	_, err := tx.Exec(ctx, `INSERT INTO billing_periods (tenant, period_start, invoice_id)
		SELECT tenant, $2, $3 FROM tenants WHERE stripe_customer_id = $1
		ON CONFLICT (tenant, period_start) DO NOTHING`, inv.Customer, period, inv.ID)
	return err
}
