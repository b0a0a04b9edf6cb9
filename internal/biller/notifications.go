package biller

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/leader"
	"github.com/usagemeter/metering/internal/notify"
	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/storage/webhooks"
)

// NotificationsLoop names the leadership of the notification reader and
// checks.
const NotificationsLoop = "notifications"

// WebhookPolicy is the retry policy cfg sets.
func WebhookPolicy(cfg config.Biller) notify.Policy {
	p := notify.DefaultPolicy
	p.Timeout, p.RetryFor, p.FailingAfter = cfg.Webhooks.Timeout, cfg.Webhooks.RetryFor, cfg.Webhooks.FailingAfter
	return p
}

// ProjectBill is the spend of a tenant's current period as GET /v1/bill
// projects it.
func ProjectBill(usage *usagedata.Reader) notify.BillProjector {
	return func(ctx context.Context, tenant string, now time.Time) (notify.Spend, error) {
		b, err := usage.Bill(ctx, tenant, now)
		if err != nil {
			return notify.Spend{}, err
		}
		return notify.Spend{ProjectedTotal: b.ProjectedTotal, Total: b.Total, Currency: b.Currency,
			PeriodStart: b.PeriodStart, PeriodEnd: b.PeriodEnd}, nil
	}
}

// Notifications returns the biller's webhook services: the reader of the
// source topics and the periodic checks, on the leader of
// NotificationsLoop only, and the dispatcher, on every replica (claims
// are exclusive: two billers never send one delivery at once).
func Notifications(pool *pgxpool.Pool, cfg config.Biller, log *slog.Logger, reg prometheus.Registerer) []service.Service {
	policy := WebhookPolicy(cfg)
	attempts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metering_webhook_attempts_total",
		Help: "Webhook delivery attempts, by outcome: delivered, retry or dead.",
	}, []string{"outcome"})
	if reg != nil {
		reg.MustRegister(attempts)
	}
	reader := &notify.Reader{Cluster: kafkalog.Cluster{Brokers: cfg.KafkaBrokers, Security: cfg.KafkaSecurity},
		DB: pool, Policy: policy, Log: log}
	checks := &notify.Checks{DB: pool, Policy: policy, GrantWarning: cfg.Webhooks.GrantWarning,
		Project: ProjectBill(usagedata.NewReader(pool).WithDefaultPlan(cfg.DefaultPlan)), Log: log}
	loop := service.Func(NotificationsLoop, func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		done := make(chan error, 2)
		go func() { done <- reader.Run(ctx) }()
		go func() { done <- checks.Run(ctx, cfg.Webhooks.CheckInterval) }()
		err := <-done
		cancel()
		return errors.Join(err, <-done)
	})
	dispatcher := &notify.Dispatcher{DB: pool, Policy: policy, Workers: cfg.Webhooks.Workers, Log: log,
		OnAttempt: func(_ webhooks.Claim, o webhooks.Outcome) {
			switch {
			case o.Delivered:
				attempts.WithLabelValues("delivered").Inc()
			case o.Dead:
				attempts.WithLabelValues("dead").Inc()
			default:
				attempts.WithLabelValues("retry").Inc()
			}
		}}
	return []service.Service{
		leader.Singleton(pool, loop, leader.Options{Logger: log, Registerer: reg}),
		service.Func("webhook-dispatcher", func(ctx context.Context) error { return dispatcher.Run(ctx, cfg.Webhooks.Poll) }),
	}
}
