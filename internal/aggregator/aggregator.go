// Package aggregator wires the aggregator service: the consumer group
// that applies usage.events to Postgres, the outbox relay that publishes
// breaches, anomalies and dead letters, the retention job, the hour
// packer (usagedata.PackHours), the anomaly detection (AnomalyJudge), and
// the HTTP endpoints for health, readiness and metrics.
//
// Invariant: the service is ready only while it is a member of the
// consumer group; its state lives entirely in Postgres, so any instance
// may be killed at any moment and another resumes where it stopped.
// Retention runs only in the replica elected leader of the loop
// "retention" (internal/leader), shown as metering_leader{loop="retention"},
// and forgets only ids of events no trusted clock can accept any more, so
// retention never makes an id countable again
// (TestRetentionNeverMakesAnOldIDCountableAgain). Anomaly detection runs
// only on the leader of the loop "anomalies" and judges each complete hour
// once: the hour's progress, episodes and messages commit together
// (TestAnomalyJudgeFlagsOnce).
package aggregator

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/consumer"
	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/leader"
	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/relay"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/topics"
)

// Open connects to Postgres and applies pending migrations.
func Open(ctx context.Context, databaseURL string, wait time.Duration, log *slog.Logger) (*pgxpool.Pool, error) {
	return migrate.OpenPool(ctx, databaseURL, wait, log)
}

// Run starts the aggregator and blocks until ctx ends. ready, if not nil,
// receives the HTTP address.
func Run(ctx context.Context, cfg config.Aggregator, log *slog.Logger, ready func(net.Addr)) error {
	pool, err := Open(ctx, cfg.DatabaseURL, cfg.ShutdownTimeout, log)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := cfg.KafkaSecurity.Start(ctx, log, cfg.KafkaBrokers); err != nil {
		return err
	}
	cluster := kafkalog.Cluster{Brokers: cfg.KafkaBrokers, Security: cfg.KafkaSecurity}
	if err := cluster.Ensure(ctx, cfg.KafkaPartitions, topics.All...); err != nil {
		log.WarnContext(ctx, "could not ensure topics", "err", err)
	}
	reg := service.NewRegistry()
	metrics := rollup.NewMetrics(reg)
	agg := rollup.New(pool, rollup.Config{
		Group: cfg.ConsumerGroup, Topic: topics.UsageEvents, Horizon: cfg.DedupHorizon, MaxLag: cfg.MaxLag,
		ConflictAlertThreshold: cfg.ConflictAlertThreshold, DefaultPlan: cfg.DefaultPlan, Metrics: metrics, Logger: log,
		AdjustmentSignatures: cfg.AdjustmentSigning.Policy(),
	})
	logAdjustmentSigning(ctx, log, cfg.AdjustmentSigning)
	registerHeldConflicts(reg, usagedata.NewConflictReader(pool), log)
	cons := consumer.New(consumer.Config{
		Brokers: cfg.KafkaBrokers, Security: cfg.KafkaSecurity, Topic: topics.UsageEvents, Group: cfg.ConsumerGroup,
		BatchSize: cfg.BatchSize, BatchWait: cfg.BatchWait, SessionTimeout: cfg.SessionTimeout,
	}, agg, log, metrics)
	writer := kafkalog.NewWriter(cfg.KafkaBrokers, cfg.KafkaSecurity.Transport())
	defer writer.Close()
	rl := relay.New(pool, writer, log, reg)
	retention := leader.Singleton(pool, retentionLoop{pool: pool, relay: rl, cfg: cfg, log: log}, leader.Options{Logger: log, Registerer: reg})
	packs := leader.Singleton(pool, hourPackLoop{pool: pool, interval: cfg.HourPackInterval, log: log, packed: newHourPackMetrics(reg)}, leader.Options{Logger: log, Registerer: reg})
	singletons := []service.Service{retention, packs}
	if a := cfg.Anomalies; a.Enabled {
		judge := &AnomalyJudge{
			Pool: pool, Detector: a.Detector, Group: cfg.ConsumerGroup, Topic: topics.UsageEvents,
			Lateness: a.Lateness, Logger: log, Flagged: newAnomalyFlagged(reg),
			Partitions: func(ctx context.Context) ([]int, error) {
				return kafkalog.Cluster{Brokers: cfg.KafkaBrokers, Security: cfg.KafkaSecurity}.Partitions(ctx, topics.UsageEvents)
			},
		}
		singletons = append(singletons, leader.Singleton(pool, anomalyLoop{judge: judge, interval: a.Interval, log: log}, leader.Options{Logger: log, Registerer: reg}))
	}

	mux := http.NewServeMux()
	service.MountLogged(mux, reg, map[string]service.Check{
		"postgres":       func(ctx context.Context) error { return pool.Ping(ctx) },
		"consumer_group": cons.Ready,
	}, log)
	// Listed in start order; RunAll stops them in reverse: HTTP drains,
	// then the singletons (retention, hour packs, anomalies) and the consumer stop,
	// then the relay; the writer flushes (deferred) after all have
	// returned.
	services := []service.Service{rl, service.Func("meters", agg.ListenForMeters), service.Func("consumer", func(ctx context.Context) error {
		// A consumer that cannot start leaves the service up but not
		// ready (consumer_group), as it always has.
		if err := cons.Run(ctx); err != nil && ctx.Err() == nil {
			log.ErrorContext(ctx, "consumer stopped", "err", err)
		}
		<-ctx.Done()
		return nil
	})}
	services = append(services, singletons...)
	return service.RunAll(ctx, log, append(services, service.Server{
		Log: log, Addr: cfg.HTTPAddr, Handler: mux, Drain: cfg.ShutdownTimeout, Ready: ready,
		Limits: service.HTTPLimits{MaxConnections: cfg.HTTPMaxConnections, WriteTimeout: cfg.HTTPWriteTimeout},
	})...)
}

// logAdjustmentSigning says at start how adjustment records are verified:
// a warning when none can be applied, or when unsigned ones are.
func logAdjustmentSigning(ctx context.Context, log *slog.Logger, s config.AdjustmentSigning) {
	switch {
	case s.Keys.Len() == 0 && s.AllowUnsigned:
		log.WarnContext(ctx, "ALLOW_UNSIGNED_ADJUSTMENTS is set and no ADJUSTMENT_SIGNING_KEYS: unsigned adjustment records are applied (development only)")
	case s.Keys.Len() == 0:
		log.WarnContext(ctx, "no ADJUSTMENT_SIGNING_KEYS: every adjustment record becomes a dead letter (class unverified) until keys are set and it is replayed")
	case s.AllowUnsigned:
		log.WarnContext(ctx, "ALLOW_UNSIGNED_ADJUSTMENTS is set: unsigned adjustment records are applied (development only)", "keys", s.Keys.IDs())
	default:
		log.InfoContext(ctx, "adjustment records are verified", "keys", s.Keys.IDs())
	}
}

// registerHeldConflicts exports the number of held conflicts, read from
// Postgres at each scrape (every replica shows the same number).
func registerHeldConflicts(reg prometheus.Registerer, r *usagedata.ConflictReader, log *slog.Logger) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "metering_aggregator_conflicts_held",
		Help: "Conflicting resends held for an operator (aggregator conflicts list --status held); -1 when Postgres did not answer.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := r.Held(ctx)
		if err != nil {
			log.Warn("counting held conflicts", "err", err)
			return -1
		}
		return float64(n)
	}))
}

// RetentionLoop names the retention job's leadership.
const RetentionLoop = "retention"

// retentionLoop deletes ledger rows of events no trusted clock can accept
// any more (see rollup.LedgerCutoff) and old published outbox rows every
// cfg.RetentionInterval. It is a singleton: it runs on the leader of
// RetentionLoop only.
type retentionLoop struct {
	pool  *pgxpool.Pool
	relay *relay.Relay
	cfg   config.Aggregator
	log   *slog.Logger
}

// Name is RetentionLoop.
func (retentionLoop) Name() string { return RetentionLoop }

// Run deletes at start and every interval until ctx ends.
func (l retentionLoop) Run(ctx context.Context) error {
	pool, rl, cfg, log := l.pool, l.relay, l.cfg, l.log
	t := time.NewTicker(cfg.RetentionInterval)
	defer t.Stop()
	for {
		n, err := usagedata.DeleteExpired(ctx, pool, rollup.LedgerCutoff(time.Now(), cfg.DedupHorizon, cfg.MaxLag))
		if err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "ledger retention", "err", err)
		} else if n > 0 {
			log.InfoContext(ctx, "ledger retention", "deleted", n)
		}
		if _, err := rl.Prune(ctx, 7*24*time.Hour); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "outbox retention", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
