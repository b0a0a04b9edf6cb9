package ingest

import (
	"context"
	"log/slog"
	"net"
	"net/http"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/auth"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/httpguard"
	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/migrate"
	"github.com/usagemeter/metering/internal/publish"
	"github.com/usagemeter/metering/internal/ratelimit"
	"github.com/usagemeter/metering/internal/relay"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/topics"
)

// Run starts the ingest service and blocks until ctx ends and in-flight
// requests have drained. ready, if not nil, receives the HTTP address.
func Run(ctx context.Context, cfg config.Ingest, log *slog.Logger, ready func(net.Addr)) error {
	pool, err := migrate.OpenPool(ctx, cfg.DatabaseURL, cfg.ShutdownTimeout, log)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := cfg.KafkaSecurity.Start(ctx, log, cfg.KafkaBrokers); err != nil {
		return err
	}
	cluster := kafkalog.Cluster{Brokers: cfg.KafkaBrokers, Security: cfg.KafkaSecurity}
	if err := cluster.Ensure(ctx, cfg.KafkaPartitions, topics.UsageEvents); err != nil {
		// The broker may come up later; publishing retries and /readyz says so.
		log.WarnContext(ctx, "could not ensure the events topic", "err", err)
	}
	// The producer checks events again before writing them: with the rules
	// the decoder accepted them under.
	validator := events.Validator{Horizon: cfg.DedupHorizon}
	producer, err := events.NewProducer(events.ProducerConfig{Brokers: cfg.KafkaBrokers, Transport: cfg.KafkaSecurity.Transport(),
		Validator: validator, Logger: log})
	if err != nil {
		return err
	}
	st := accounts.New(pool)
	adjustments := kafkalog.NewWriter(cfg.KafkaBrokers, cfg.KafkaSecurity.Transport())
	defer func() {
		if err := adjustments.Close(); err != nil {
			log.Error("closing the adjustments writer", "err", err)
		}
	}()
	switch s := cfg.AdjustmentSigning; {
	case s.Keys.Len() > 0:
		log.InfoContext(ctx, "adjustment records are signed", "key", s.Keys.SigningKeyID())
	case s.AllowUnsigned:
		log.WarnContext(ctx, "ALLOW_UNSIGNED_ADJUSTMENTS is set and no ADJUSTMENT_SIGNING_KEYS: adjustments are written unsigned (development only)")
	default:
		log.WarnContext(ctx, "no ADJUSTMENT_SIGNING_KEYS: POST /v1/admin/adjustments answers 503 adjustments_not_configured")
	}
	reg := service.NewRegistry()
	api := New(Options{
		Store:       st,
		Auth:        auth.New(st, cfg.AdminAPIKey, auth.WithLogger(log), auth.WithRegisterer(reg)),
		Publisher:   publish.New(producer, cfg.MaxInFlightEvents, cfg.PublishTimeout),
		Adjustments: adjustments,
		Log:         cluster,
		// The aggregator verifies with the same setting.
		AdjustmentKeys:           cfg.AdjustmentSigning.Keys,
		AllowUnsignedAdjustments: cfg.AdjustmentSigning.AllowUnsigned,
		Usage:                    usagedata.NewReader(pool).WithDefaultPlan(cfg.DefaultPlan),
		Conflicts:                usagedata.NewConflictReader(pool),
		DB:                       pool,
		Decoder:                  events.Decoder{Validator: validator},
		KeyLimiter:               ratelimit.New(cfg.KeyEventsPerSecond, cfg.KeyBurst),
		IPLimiter:                ratelimit.New(cfg.IPRequestsPerSecond, cfg.IPBurst),
		MaxBodyBytes:             cfg.MaxBodyBytes,
		WebhookAllowHTTP:         cfg.WebhookAllowHTTP,
		LargeBodies:              httpguard.BodyLimits{LargeBytes: cfg.LargeBodyBytes, MaxLarge: cfg.MaxLargeBodiesInFlight},
		Logger:                   log,
		Registry:                 reg,
		DeadLetters:              rollup.NewDeadLetters(pool),
		Outbox:                   relay.New(pool, adjustments, log, nil),
		BillerURL:                cfg.BillerURL,
	})
	mux := http.NewServeMux()
	service.MountLogged(mux, reg, map[string]service.Check{
		"postgres": st.Ping,
		"kafka": func(ctx context.Context) error {
			return cluster.Ping(ctx, topics.UsageEvents)
		},
	}, log)
	serveErr := service.ServeLimited(ctx, log, cfg.HTTPAddr, api.Handler(mux), cfg.ShutdownTimeout, service.HTTPLimits{
		MaxConnections: cfg.HTTPMaxConnections, WriteTimeout: cfg.HTTPWriteTimeout,
	}, ready)
	// Requests have drained; flush what the producer still holds.
	if err := producer.Close(); err != nil {
		log.Error("closing producer", "err", err)
	}
	return serveErr
}

// Migrate applies pending migrations and returns.
func Migrate(ctx context.Context, databaseURL string, log *slog.Logger) error {
	pool, err := migrate.OpenPool(ctx, databaseURL, 0, log)
	if err != nil {
		return err
	}
	pool.Close()
	log.InfoContext(ctx, "schema up to date")
	return nil
}
