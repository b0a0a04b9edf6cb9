package aggregator

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/anomaly"
	"github.com/usagemeter/metering/internal/storage/anomalydata"
	"github.com/usagemeter/metering/internal/storage/billingdata"
	"github.com/usagemeter/metering/internal/storage/outbox"
	"github.com/usagemeter/metering/internal/topics"
)

// AnomaliesLoop names the anomaly detection's leadership.
const AnomaliesLoop = "anomalies"

// maxHoursPerRound bounds the hours one round judges, so a leader that
// comes back after a long pause catches up over several rounds.
const maxHoursPerRound = 24

// AnomalyJudge judges complete hours of usage for anomalies: each hour
// once, in order, in one transaction that moves the progress, records the
// episodes and queues each new episode's usage.anomalies message.
type AnomalyJudge struct {
	// Pool is the database.
	Pool *pgxpool.Pool
	// Detector is the detector's configuration.
	Detector anomaly.Config
	// Group and Topic name the consumer group and topic whose partition
	// watermarks say how far usage is applied.
	Group, Topic string
	// Lateness is how far past an hour's end every partition must be
	// applied before the hour is judged.
	Lateness time.Duration
	// Partitions lists the topic's partitions (from Kafka), so that a
	// partition no batch has stored yet keeps every hour incomplete; nil
	// trusts the stored partitions alone (tests that store them all).
	Partitions func(ctx context.Context) ([]int, error)
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Logger receives the episodes flagged; nil discards.
	Logger *slog.Logger
	// Flagged counts the episodes flagged, by direction; nil counts none.
	Flagged *prometheus.CounterVec
}

// Complete returns the start of the latest complete hour: every partition
// of the group's topic is applied up to its end plus the lateness, and so
// is the clock. False when no hour is (no partition stored, a partition
// Kafka lists that none has stored yet, or one without a watermark): at
// start-up the first partition applied must not make an hour complete
// whose events wait in the others.
func (j *AnomalyJudge) Complete(ctx context.Context) (time.Time, bool, error) {
	parts, err := billingdata.Watermarks(ctx, j.Pool, j.Group, j.Topic)
	if err != nil {
		return time.Time{}, false, err
	}
	reach := j.now()
	if len(parts) == 0 {
		return time.Time{}, false, nil
	}
	if j.Partitions != nil {
		listed, err := j.Partitions(ctx)
		if err != nil {
			return time.Time{}, false, fmt.Errorf("listing the partitions of %s: %w", j.Topic, err)
		}
		stored := make(map[int]bool, len(parts))
		for _, p := range parts {
			stored[p.Partition] = true
		}
		for _, p := range listed {
			if !stored[p] {
				return time.Time{}, false, nil
			}
		}
	}
	for _, p := range parts {
		if p.Watermark == nil {
			return time.Time{}, false, nil
		}
		if p.Watermark.Before(reach) {
			reach = *p.Watermark
		}
	}
	// The hour [h, h+1h) is complete when h+1h+lateness <= reach.
	return reach.Add(-j.Lateness).UTC().Truncate(time.Hour).Add(-time.Hour), true, nil
}

func (j *AnomalyJudge) now() time.Time {
	if j.Now == nil {
		return time.Now()
	}
	return j.Now()
}

// Round judges the complete hours after the last one judged, at most
// maxHoursPerRound, and returns how many it judged. With no hour judged
// yet it starts at the latest complete hour. It stops, judging nothing
// more, when another leader moved the progress first.
func (j *AnomalyJudge) Round(ctx context.Context) (int, error) {
	latest, ok, err := j.Complete(ctx)
	if err != nil || !ok {
		return 0, err
	}
	last, judged, err := anomalydata.Progress(ctx, j.Pool)
	if err != nil {
		return 0, err
	}
	next := latest
	if judged {
		next = last.UTC().Add(time.Hour)
	}
	n := 0
	for ; !next.After(latest) && n < maxHoursPerRound; next = next.Add(time.Hour) {
		moved, err := j.judge(ctx, last, next)
		if err != nil || !moved {
			return n, err
		}
		last = next
		n++
	}
	return n, nil
}

// judge judges the hour h, the one after prev (zero: none judged yet), in
// one transaction; false when another leader had judged it.
func (j *AnomalyJudge) judge(ctx context.Context, prev, h time.Time) (bool, error) {
	var flagged []anomaly.Anomaly
	moved := false
	err := pgx.BeginFunc(ctx, j.Pool, func(tx pgx.Tx) error {
		var err error
		if moved, err = anomalydata.Advance(ctx, tx, prev, h); err != nil || !moved {
			return err
		}
		baseline := j.Detector.BaselineHours(h)
		totals, err := anomalydata.HourTotals(ctx, tx, append([]time.Time{h}, baseline...))
		if err != nil {
			return err
		}
		open, err := anomalydata.Open(ctx, tx)
		if err != nil {
			return err
		}
		d, err := j.Detector.Detect(anomaly.Hour{
			Start: h, Totals: totals, Open: open, DetectedAt: j.now().UTC().Truncate(time.Second),
			Mature: func(s anomaly.Series) (bool, error) { return anomalydata.Mature(ctx, tx, s, baseline[0]) },
		})
		if err != nil {
			return err
		}
		for _, e := range d.Ended {
			if err := anomalydata.End(ctx, tx, e); err != nil {
				return err
			}
		}
		for _, e := range d.Extended {
			if err := anomalydata.Extend(ctx, tx, e); err != nil {
				return err
			}
		}
		var msgs []outbox.Message
		for _, a := range d.Flagged {
			inserted, err := anomalydata.Insert(ctx, tx, a)
			if err != nil {
				return err
			}
			if !inserted {
				continue
			}
			v, err := a.Message()
			if err != nil {
				return err
			}
			msgs = append(msgs, outbox.Message{Topic: topics.UsageAnomalies, Key: []byte(a.Tenant), Value: v, Headers: map[string]string{"anomaly-id": a.ID}})
			flagged = append(flagged, a)
		}
		return outbox.Enqueue(ctx, tx, msgs...)
	})
	if err != nil {
		return false, fmt.Errorf("judging the hour %s for anomalies: %w", h.Format(time.RFC3339), err)
	}
	for _, a := range flagged {
		if j.Logger != nil {
			j.Logger.InfoContext(ctx, "usage anomaly", "id", a.ID, "tenant", a.Tenant, "meter", a.Meter, "direction", a.Direction,
				"hour", a.Hour.Format(time.RFC3339), "observed", a.Observed.String(), "expected", anomaly.Decimal(a.Expected), "score", a.Score.FloatString(2))
		}
		if j.Flagged != nil {
			j.Flagged.WithLabelValues(string(a.Direction)).Inc()
		}
	}
	return moved, nil
}

// anomalyLoop runs an AnomalyJudge's rounds every interval; a singleton
// run on the leader of AnomaliesLoop only.
type anomalyLoop struct {
	judge    *AnomalyJudge
	interval time.Duration
	log      *slog.Logger
}

// Name is AnomaliesLoop.
func (anomalyLoop) Name() string { return AnomaliesLoop }

// Run judges at start and every interval until ctx ends.
func (l anomalyLoop) Run(ctx context.Context) error {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		if _, err := l.judge.Round(ctx); err != nil && ctx.Err() == nil {
			l.log.WarnContext(ctx, "anomaly detection", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// newAnomalyFlagged registers metering_aggregator_anomalies_total.
func newAnomalyFlagged(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metering_aggregator_anomalies_total",
		Help: "Usage anomaly episodes flagged by this replica (as leader of the loop anomalies), by direction: spike or drop.",
	}, []string{"direction"})
	reg.MustRegister(c)
	return c
}
