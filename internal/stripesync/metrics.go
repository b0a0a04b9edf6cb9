package stripesync

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the biller.
type Metrics struct {
	pushes   *prometheus.CounterVec
	failures *prometheus.CounterVec
	attempts prometheus.Histogram
	Unmapped prometheus.Gauge
	DLQDepth prometheus.Gauge
	Drift    *prometheus.GaugeVec
	old      *prometheus.CounterVec
}

// NewMetrics registers the biller's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metering_biller_pushes_total", Help: "Meter event pushes by outcome: sent or dead_lettered.",
		}, []string{"outcome"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metering_biller_stripe_failures_total", Help: "Failed Stripe calls by class (rate_limit, lock_timeout, server_error, network, invalid_request, ...).",
		}, []string{"class"}),
		attempts: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "metering_biller_push_attempts", Help: "Stripe calls per push.", Buckets: []float64{1, 2, 3, 4, 6, 8, 12},
		}),
		Unmapped: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "metering_biller_unmapped", Help: "Tenant-metric-months with usage but no Stripe customer or meter, at the last sync.",
		}),
		DLQDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "metering_biller_dlq_depth", Help: "Pushes in the billing dead-letter queue.",
		}),
		Drift: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "metering_biller_drift", Help: "Metered minus Stripe's total summed over rows of the last reconciliation, by status.",
		}, []string{"status"}),
		old: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metering_biller_old_pushes_total",
			Help: "Open pushes older than Stripe's identifier memory, checked against its summaries: landed (had arrived, not sent again) or replaced (the shortfall sent as a new push).",
		}, []string{"outcome"}),
	}
	reg.MustRegister(m.pushes, m.failures, m.attempts, m.Unmapped, m.DLQDepth, m.Drift, m.old)
	return m
}

func (m *Metrics) push(err error, attempts int) {
	if m == nil {
		return
	}
	m.attempts.Observe(float64(attempts))
	if err == nil {
		m.pushes.WithLabelValues("sent").Inc()
		return
	}
	m.pushes.WithLabelValues("dead_lettered").Inc()
}

func (m *Metrics) failure(class string) {
	if m != nil {
		m.failures.WithLabelValues(class).Inc()
	}
}

func (m *Metrics) unmapped(n int) {
	if m != nil {
		m.Unmapped.Set(float64(n))
	}
}

func (m *Metrics) resolved(landed, replaced int) {
	if m != nil {
		m.old.WithLabelValues("landed").Add(float64(landed))
		m.old.WithLabelValues("replaced").Add(float64(replaced))
	}
}
