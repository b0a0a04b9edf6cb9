package rollup

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagemeter/metering/internal/storage/usagedata"
)

// Metrics of the aggregator.
type Metrics struct {
	events      *prometheus.CounterVec
	batchSize   prometheus.Histogram
	batchTime   prometheus.Histogram
	breaches    *prometheus.CounterVec
	Lag         *prometheus.GaugeVec
	Assigned    prometheus.Gauge
	Rebalances  prometheus.Counter
	BatchErrors prometheus.Counter
	// KafkaCommitErrors counts failed copies of committed offsets to the
	// group in Kafka (informational; Postgres holds the offsets).
	KafkaCommitErrors prometheus.Counter
	// Stalled is 1 for a partition that cannot make progress (see the
	// consumer's Ready), 0 once it moves again.
	Stalled *prometheus.GaugeVec
	// Retries counts failed batch attempts by kind: transient (database
	// or network outage, retried with backoff), record (a record the
	// database refuses; the batch is bisected), other (retried).
	Retries *prometheus.CounterVec
	// Isolated counts records dead-lettered as unprocessable by bisection.
	Isolated prometheus.Counter
	// ReaderRestarts counts partition readers restarted after an error.
	ReaderRestarts *prometheus.CounterVec
	// IdleRebalances counts rejoins this member forced because another
	// member's partition had records waiting and did not move.
	IdleRebalances *prometheus.CounterVec
	lostRecords    *prometheus.CounterVec
	conflicts      *prometheus.CounterVec
	conflictAlerts prometheus.Counter
}

// NewMetrics registers the aggregator's metrics on reg. It is one list of
// declarations, run once at start, so it stays whole: split, a metric's
// name, help and labels would sit apart from its neighbours'.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metering_aggregator_events_total",
			Help: "Records by outcome: counted, duplicate, conflict (same id, other payload), dead_letter, late (counted into a closed period).",
		}, []string{"outcome"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "metering_aggregator_batch_records", Help: "Records per committed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		batchTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "metering_aggregator_batch_seconds", Help: "Time to apply and commit one batch.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 10),
		}),
		breaches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metering_aggregator_breaches_total", Help: "Quota breaches detected, by threshold.",
		}, []string{"threshold"}),
		Lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "metering_aggregator_partition_lag", Help: "Records between the committed offset and the partition's high watermark.",
		}, []string{"partition"}),
		Assigned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "metering_aggregator_assigned_partitions", Help: "Partitions this instance consumes now.",
		}),
		Rebalances: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metering_aggregator_generations_total", Help: "Consumer group generations joined.",
		}),
		BatchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metering_aggregator_batch_errors_total", Help: "Batches that failed and will be retried.",
		}),
		KafkaCommitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "metering_aggregator_kafka_offset_commit_errors_total",
			Help: "Failed copies of committed offsets to the consumer group in Kafka (informational: offsets live in Postgres).",
		}),
	}
	m.Stalled = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "metering_aggregator_partition_stalled",
		Help: "1 while a partition of this instance cannot make progress (database down too long, or the same offset failing again and again).",
	}, []string{"partition"})
	m.Retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metering_aggregator_batch_retries_total",
		Help: "Failed batch attempts by kind: transient (outage, retried with backoff), record (bisected to the offending record), other (retried).",
	}, []string{"kind"})
	m.Isolated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "metering_aggregator_isolated_records_total",
		Help: "Records the database refused, isolated from their batch and dead-lettered as unprocessable.",
	})
	m.ReaderRestarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metering_aggregator_reader_restarts_total", Help: "Partition readers restarted after an error, by partition.",
	}, []string{"partition"})
	m.IdleRebalances = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metering_aggregator_idle_partition_rebalances_total",
		Help: "Rejoins forced because a partition of another member had records waiting and did not move for the session timeout, by partition.",
	}, []string{"partition"})
	m.lostRecords = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metering_aggregator_lost_records_total",
		Help: "Records deleted from the log (retention) before they were counted, by partition; each gap has a consumer_lost_records row.",
	}, []string{"partition"})
	m.conflicts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metering_aggregator_conflicts_total",
		Help: "Resends with a counted event's (tenant, id) and another payload, by resolution: raised (same metric and time, larger value: the difference counted), kept (lower or equal value), held (another metric or time: counted only if an operator says so).",
	}, []string{"resolution"})
	for _, r := range []string{usagedata.ResolutionRaised, usagedata.ResolutionKept, usagedata.ResolutionHeld} {
		m.conflicts.WithLabelValues(r)
	}
	m.conflictAlerts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "metering_aggregator_conflict_alerts_total",
		Help: "Tenants whose held and raised conflicts of a UTC day went beyond CONFLICT_ALERT_THRESHOLD (once per tenant and day; the tenant is in the error log and GET /v1/conflicts says alerting).",
	})
	reg.MustRegister(m.conflicts, m.conflictAlerts)
	reg.MustRegister(m.Stalled, m.Retries, m.Isolated, m.ReaderRestarts, m.IdleRebalances, m.lostRecords)
	reg.MustRegister(m.events, m.batchSize, m.batchTime, m.breaches, m.Lag, m.Assigned, m.Rebalances, m.BatchErrors, m.KafkaCommitErrors)
	return m
}

func (m *Metrics) observe(r Result, records int, took time.Duration) {
	if m == nil {
		return
	}
	m.events.WithLabelValues("counted").Add(float64(r.Counted))
	m.events.WithLabelValues("duplicate").Add(float64(r.Duplicates))
	m.events.WithLabelValues("conflict").Add(float64(r.Conflicts))
	m.events.WithLabelValues("dead_letter").Add(float64(r.DeadLettered))
	m.events.WithLabelValues("late").Add(float64(r.Late))
	m.conflicts.WithLabelValues(usagedata.ResolutionRaised).Add(float64(r.Raised))
	m.conflicts.WithLabelValues(usagedata.ResolutionKept).Add(float64(r.Kept))
	m.conflicts.WithLabelValues(usagedata.ResolutionHeld).Add(float64(r.Held))
	m.conflictAlerts.Add(float64(len(r.Alerts)))
	m.batchSize.Observe(float64(records))
	m.batchTime.Observe(took.Seconds())
	for _, b := range r.Breaches {
		m.breaches.WithLabelValues(b.Threshold).Inc()
	}
}

func (m *Metrics) lost(partition int, n int64) {
	if m == nil {
		return
	}
	m.lostRecords.WithLabelValues(strconv.Itoa(partition)).Add(float64(n))
}
