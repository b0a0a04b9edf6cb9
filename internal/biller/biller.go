// Package biller wires the biller service: the sync loop that pushes
// deltas to Stripe every SYNC_INTERVAL and right after each month ends,
// the outbox relay for billing.dlq, the Stripe webhook endpoint, the
// reconciliation API, the webhook notifications (internal/notify: the
// source reader and checks on the leader of "notifications", the
// dispatcher on every replica), and the operator commands.
//
// Replicas: any number of billers may run against one database. The sync
// loop runs only in the replica elected leader of the loop "billing-sync"
// (internal/leader, metering_leader{loop="billing-sync"}), so replicas do
// not duplicate work; correctness does not rest on the election, since a
// deposed leader may overlap its successor for one interval and operator
// commands run beside the service: internal/stripesync takes its own
// advisory locks. Webhooks and the reconciliation are served by every
// replica: a webhook takes effect once per event id (a unique row in the
// same transaction), and the reconciliation only reads.
//
// Invariant: all state is in Postgres (intents, outcomes, DLQ), so the
// process may be killed at any moment; the next leader re-sends open
// intents with their original identifiers first, and Stripe's running
// total never exceeds the metered total, with one biller or several.
package biller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/csvsafe"
	"github.com/usagemeter/metering/internal/httpjson"
	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/leader"
	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/notify"
	"github.com/usagemeter/metering/internal/periodclose"
	"github.com/usagemeter/metering/internal/relay"
	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/stripesync"
	"github.com/usagemeter/metering/internal/stripewebhook"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// Routes the biller serves besides service.Routes.
var Routes = append(append([]string{"POST /webhooks/stripe", "GET /v1/reconciliation"}, DLQRoutes...), HoldRoutes...)

// Open connects to Postgres and applies pending migrations.
func Open(ctx context.Context, databaseURL string, wait time.Duration, log *slog.Logger) (*pgxpool.Pool, error) {
	return migrate.OpenPool(ctx, databaseURL, wait, log)
}

// NewBiller builds the billing engine for cfg.
func NewBiller(pool *pgxpool.Pool, cfg config.Biller, log *slog.Logger, metrics *stripesync.Metrics) (*stripesync.Biller, error) {
	if cfg.StripeAPIKey == "" {
		return nil, errors.New("STRIPE_API_KEY is not set: use a Stripe secret key, or sk_test_... with STRIPE_API_BASE pointing at stripe-mock or the test server")
	}
	return stripesync.New(pool, stripeapi.NewClient(cfg.StripeAPIKey, cfg.StripeAPIBase, cfg.StripeTimeout), stripesync.Config{
		RatePerSecond: cfg.StripeRate, MaxAttempts: cfg.MaxAttempts, DefaultPlan: cfg.DefaultPlan, Logger: log, Metrics: metrics,
	}), nil
}

// NewCloser builds the period closer for cfg: the aggregator's group
// CONSUMER_GROUP on usage.events, BILLING_ALLOWED_LATENESS, and the
// topic's partitions as the brokers list them (a partition no consumer
// has stored yet keeps periods incomplete).
func NewCloser(pool *pgxpool.Pool, cfg config.Biller, log *slog.Logger) *periodclose.Closer {
	cluster := kafkalog.Cluster{Brokers: cfg.KafkaBrokers, Security: cfg.KafkaSecurity}
	partitions := func(ctx context.Context) ([]int, error) { return cluster.Partitions(ctx, topics.UsageEvents) }
	return periodclose.New(pool, periodclose.Config{Group: cfg.ConsumerGroup, Topic: topics.UsageEvents, Lateness: cfg.AllowedLateness,
		Partitions: partitions, Usage: usagedata.NewReader(pool).WithDefaultPlan(cfg.DefaultPlan), Logger: log})
}

// AddCompleteness sets Complete and Completeness on each of rows, the
// reconciliation of the month starting at period, from its tenant's
// completeness of the row's billing period (tenants sharing a period are
// judged together).
func AddCompleteness(ctx context.Context, closer *periodclose.Closer, period time.Time, rows []stripesync.Row) error {
	if len(rows) == 0 {
		return nil
	}
	type span struct{ start, end time.Time }
	var spans []span
	tenants := map[span][]string{}
	seen := map[string]bool{}
	for _, r := range rows {
		if !seen[r.Tenant] {
			seen[r.Tenant] = true
			sp := span{r.PeriodStart, r.PeriodEnd}
			if _, ok := tenants[sp]; !ok {
				spans = append(spans, sp)
			}
			tenants[sp] = append(tenants[sp], r.Tenant)
		}
	}
	status := map[string]periodclose.Status{}
	for _, sp := range spans {
		st, err := closer.Statuses(ctx, sp.start, sp.end, tenants[sp])
		if err != nil {
			return fmt.Errorf("judging the completeness of %s: %w", period.Format("2006-01"), err)
		}
		maps.Copy(status, st)
	}
	for i := range rows {
		s := status[rows[i].Tenant]
		rows[i].Complete, rows[i].Completeness = s.Complete, s.String()
	}
	return nil
}

// Run starts the biller and blocks until ctx ends.
func Run(ctx context.Context, cfg config.Biller, log *slog.Logger, ready func(net.Addr)) error {
	pool, err := Open(ctx, cfg.DatabaseURL, cfg.ShutdownTimeout, log)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := cfg.KafkaSecurity.Start(ctx, log, cfg.KafkaBrokers); err != nil {
		return err
	}
	cluster := kafkalog.Cluster{Brokers: cfg.KafkaBrokers, Security: cfg.KafkaSecurity}
	if err := cluster.Ensure(ctx, cfg.KafkaPartitions, topics.BillingDLQ, topics.BillingEvents, topics.QuotaBreaches, notify.AnomaliesTopic); err != nil {
		log.WarnContext(ctx, "could not ensure the biller's topics", "topics", []string{topics.BillingDLQ, topics.BillingEvents, topics.QuotaBreaches, notify.AnomaliesTopic}, "err", err)
	}
	reg := service.NewRegistry()
	metrics := stripesync.NewMetrics(reg)
	b, err := NewBiller(pool, cfg, log, metrics)
	if err != nil {
		return err
	}
	writer := kafkalog.NewWriter(cfg.KafkaBrokers, cfg.KafkaSecurity.Transport())
	defer writer.Close()
	rl := relay.New(pool, writer, log, reg)

	closer := NewCloser(pool, cfg, log)
	syncer := leader.Singleton(pool, syncLoop{b: b, closer: closer, interval: cfg.SyncInterval, log: log},
		leader.Options{Interval: min(cfg.SyncInterval, leader.DefaultInterval), Logger: log, Registerer: reg})

	st := accounts.New(pool)
	authn := auth.New(st, cfg.AdminAPIKey, auth.WithLogger(log), auth.WithRegisterer(reg))
	mux := http.NewServeMux()
	service.MountLogged(mux, reg, map[string]service.Check{"postgres": st.Ping}, log)
	mux.Handle(Routes[0], stripewebhook.New(pool, cfg.StripeWebhookSecret, log, stripewebhook.WithRegisterer(reg),
		stripewebhook.WithDefaultPlan(cfg.DefaultPlan)))
	MountAPI(mux, authn, b, closer, log)
	// Listed in start order; RunAll stops them in reverse: HTTP drains,
	// then the webhook services and the sync loop stop, then the relay;
	// the writer flushes (deferred) after all have returned.
	svcs := append([]service.Service{rl, syncer}, Notifications(pool, cfg, log, reg)...)
	return service.RunAll(ctx, log, append(svcs, service.Server{
		Log: log, Addr: cfg.HTTPAddr, Handler: mux, Drain: cfg.ShutdownTimeout, Ready: ready,
		Limits: service.HTTPLimits{MaxConnections: cfg.HTTPMaxConnections, WriteTimeout: cfg.HTTPWriteTimeout},
	})...)
}

// reconciliation serves GET /v1/reconciliation (to admin and viewer keys:
// MountAPI gates it).
func reconciliation(b *stripesync.Biller, closer *periodclose.Closer, log *slog.Logger) auth.Handler {
	return func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
		period, err := ParsePeriod(r.URL.Query().Get("period"))
		if err != nil {
			httpjson.Error(w, http.StatusBadRequest, "invalid_request", err.Error())
			return
		}
		// One Stripe read per tenant and metric at STRIPE_RATE_LIMIT can
		// outlast HTTP_WRITE_TIMEOUT; this answer gets its own deadline.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(reconcileWriteTimeout))
		rows, err := b.Reconcile(r.Context(), period)
		if err == nil {
			err = AddCompleteness(r.Context(), closer, period, rows)
		}
		if err != nil {
			// The error names Stripe's or Postgres's address: the log only.
			log.ErrorContext(r.Context(), "reconciliation", "err", err)
			httpjson.Error(w, http.StatusBadGateway, "stripe_unavailable",
				"could not complete the reconciliation: Stripe or the database did not answer; retry in a minute (the biller's log has the details)")
			return
		}
		if r.URL.Query().Get("format") == "csv" {
			w.Header().Set("Content-Type", "text/csv; charset=utf-8; header=present")
			w.Header().Set("Content-Disposition", `attachment; filename="reconciliation-`+period.Format("2006-01")+`.csv"`)
			_ = WriteReport(w, rows, "csv")
			return
		}
		httpjson.Write(w, http.StatusOK, map[string]any{"period": period.Format("2006-01"), "rows": rows})
	}
}

// reconcileWriteTimeout bounds GET /v1/reconciliation, which reads Stripe
// once per tenant and metric.
const reconcileWriteTimeout = 15 * time.Minute

// SyncLoop names the sync loop's leadership.
const SyncLoop = "billing-sync"

// syncLoop syncs at start, every interval, and just after each month
// ends, and after each sync announces the periods that became complete.
// It is a singleton: it runs on the leader of SyncLoop only.
type syncLoop struct {
	b *stripesync.Biller
	// closer may be nil: no period is announced.
	closer   *periodclose.Closer
	interval time.Duration
	log      *slog.Logger
}

// Name is SyncLoop.
func (syncLoop) Name() string { return SyncLoop }

// Run syncs until ctx ends; a failed sync is logged and retried.
func (l syncLoop) Run(ctx context.Context) error {
	b, interval, log := l.b, l.interval, l.log
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		res, err := b.Sync(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			log.WarnContext(ctx, "sync failed; retrying at the next interval", "err", err)
		case res.Intents+res.Sent+res.Dead+res.Landed+res.Replaced+res.Waiting > 0:
			log.InfoContext(ctx, "synced with Stripe", "intents", res.Intents, "sent", res.Sent, "dead_lettered", res.Dead,
				"carried", res.Carried, "cancelled", res.Cancelled, "unmapped", len(res.Unmapped),
				"old_landed", res.Landed, "old_replaced", res.Replaced, "old_waiting", res.Waiting)
		}
		_, _, _ = b.CountOpenPushes(ctx)
		if l.closer != nil {
			if cres, err := l.closer.Close(ctx); err != nil && ctx.Err() == nil {
				log.WarnContext(ctx, "closing billing periods failed; retrying at the next interval", "err", err)
			} else if cres.Waiting > 0 {
				log.DebugContext(ctx, "billing periods ended but not complete yet", "waiting", cres.Waiting, "closed", cres.Closed)
			}
			if _, err := l.closer.ExpireGrants(ctx); err != nil && ctx.Err() == nil {
				log.WarnContext(ctx, "announcing expired credit grants failed; retrying at the next interval", "err", err)
			}
		}
		next := b.NextPeriodEnd(ctx, time.Now()).Add(time.Minute)
		closeTimer := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			closeTimer.Stop()
			return nil
		case <-tick.C:
		case <-closeTimer.C:
			log.InfoContext(ctx, "month closed: final sync for it")
		}
		closeTimer.Stop()
	}
}

// ParsePeriod parses YYYY-MM (empty: the current month).
func ParsePeriod(s string) (time.Time, error) {
	if s == "" {
		return windows.Month.Start(time.Now()), nil
	}
	t, err := time.Parse("2006-01", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("period must be YYYY-MM, such as 2026-11; got %q", s)
	}
	return t.UTC(), nil
}

func orDash(v fmt.Stringer, isNil bool) string {
	if isNil {
		return "-"
	}
	return v.String()
}

// writeCompleteness writes, under the table, a line per tenant saying
// whether its period is complete, or why not.
func writeCompleteness(w io.Writer, rows []stripesync.Row) {
	seen := map[string]bool{}
	for _, r := range rows {
		if seen[r.Tenant] || r.Completeness == "" {
			continue
		}
		seen[r.Tenant] = true
		if r.Complete {
			fmt.Fprintf(w, "period %s of %s: complete\n", r.Period, r.Tenant)
		} else {
			fmt.Fprintf(w, "period %s of %s: not complete: %s\n", r.Period, r.Tenant, r.Completeness)
		}
	}
}

// WriteReport writes reconciliation rows as table, csv or json.
func WriteReport(w io.Writer, rows []stripesync.Row, format string) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	case "csv":
		// csvsafe quotes every cell and neutralises formula triggers, so the
		// export is safe to open in a spreadsheet.
		cw := csvsafe.NewWriter(w)
		_ = cw.Write([]string{"tenant", "metric", "period", "metered", "reported", "in_flight", "stripe", "drift", "carried_out", "carried_in", "status", "note", "meter", "group", "complete", "completeness", "credited", "adjustments"})
		for _, r := range rows {
			_ = cw.Write([]string{r.Tenant, r.Metric, r.Period, r.Metered.String(), r.Reported.String(), r.InFlight.String(),
				orDash(r.Stripe, r.Stripe == nil), r.Drift.String(), r.CarriedOut.String(), r.CarriedIn.String(), r.Status, r.Note, r.Meter, r.Group, strconv.FormatBool(r.Complete), r.Completeness,
				orDash(r.Credited, r.Credited == nil), adjustmentsCell(r.Adjustments)})
		}
		return cw.Flush()
	case "table", "":
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "TENANT\tMETRIC\tMETER\tGROUP\tPERIOD\tMETERED\tREPORTED\tSTRIPE\tDRIFT\tSTATUS\tNOTE\t")
		counts := map[string]int{}
		for _, r := range rows {
			counts[r.Status]++
			group := r.Group
			if group == "" {
				group = "-" // a meter without groups
			}
			meterName := r.Meter
			if meterName == "" {
				meterName = r.Metric
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Tenant, r.Metric, meterName, group, r.Period, r.Metered, r.Reported,
				orDash(r.Stripe, r.Stripe == nil), r.Drift, r.Status, r.Note)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(w, "%d rows: %d ok, %d pending, %d drift, %d unmapped\n", len(rows),
			counts[stripesync.StatusOK], counts[stripesync.StatusPending], counts[stripesync.StatusDrift], counts[stripesync.StatusUnmapped])
		if err := writeAdjustments(w, rows); err != nil {
			return err
		}
		writeCompleteness(w, rows)
		return nil
	}
	return fmt.Errorf("format must be table, csv or json; got %q", format)
}
