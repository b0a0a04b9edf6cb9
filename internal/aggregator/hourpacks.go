package aggregator

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// HourPacksLoop names the hour packer's leadership.
const HourPacksLoop = "hour-packs"

// hourPackStaleBatch bounds the days marked stale one round repacks.
const hourPackStaleBatch = 10000

// hourPackLoop packs grouped meters' hour windows for reads
// (usagedata.PackHours) at start and every interval; a singleton run on
// the leader of HourPacksLoop only.
type hourPackLoop struct {
	pool     *pgxpool.Pool
	interval time.Duration
	log      *slog.Logger
	packed   *prometheus.CounterVec
}

// Name is HourPacksLoop.
func (hourPackLoop) Name() string { return HourPacksLoop }

// Run packs at start and every interval until ctx ends.
func (l hourPackLoop) Run(ctx context.Context) error {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		st, err := usagedata.PackHours(ctx, l.pool, hourPackStaleBatch)
		l.packed.WithLabelValues("repacked").Add(float64(st.Repacked))
		l.packed.WithLabelValues("new").Add(float64(st.Units))
		switch {
		case errors.Is(err, usagedata.ErrOldTransaction):
			l.log.WarnContext(ctx, "hour packs: no day packed while a transaction older than a day is open", "repacked", st.Repacked, "packed", st.Units)
		case err != nil && ctx.Err() == nil:
			l.log.WarnContext(ctx, "hour packs", "err", err)
		case st.Repacked+st.Cleared+st.Units > 0:
			l.log.InfoContext(ctx, "hour packs", "repacked", st.Repacked, "cleared", st.Cleared, "days", st.Days, "packed", st.Units, "next_day", st.NextDay)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// newHourPackMetrics registers metering_aggregator_hour_packs_total.
func newHourPackMetrics(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metering_aggregator_hour_packs_total",
		Help: "Days of a tenant's grouped meter whose hour windows this replica packed for reads (as leader of the loop hour-packs), by kind: new (a day three days old) or repacked (a day changed after it was packed).",
	}, []string{"kind"})
	reg.MustRegister(c)
	return c
}
