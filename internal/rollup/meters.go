package rollup

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/meterset"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/windows"
)

// refuseShadowedMetrics makes a dead letter of each countable event whose
// metric is the name of a defined meter that is not that metric's
// implicit meter: counting it would write two meters' windows under one
// name. The admin API refuses such a meter name while the metric is in
// use, so only events of a metric that appears after the meter was
// defined get here; they wait in the dead-letter queue, replayable once
// the meter is renamed.
func refuseShadowedMetrics(batch []decoded, meters *meterset.Set) {
	if meters.Len() == 0 {
		return
	}
	for i := range batch {
		d := &batch[i]
		if d.class != "" {
			continue
		}
		if m, ok := meters.Shadows(d.ev.Metric); ok {
			d.class = ClassInvalid
			d.err = Sanitize(fmt.Sprintf("metric: %q is the name of meter %q (a %s of metric %q); a metric must not take the name of another meter",
				d.ev.Metric, m.Name, m.Aggregation, m.Metric))
		}
	}
}

// addToMeters adds incs to the windows of the defined meters their events
// match, in every granularity. A new event adds its contribution to each;
// a raise (the same event, with a greater value) adds the difference to a
// sum, offers the greater value to max and latest (same time and id: it
// replaces the value it raises), and leaves count and unique_count as they
// are (no new event, the same properties). A meter whose definition
// changed after the raised event was counted is left alone: it did not
// count that event with this definition.
func addToMeters(ctx context.Context, tx pgx.Tx, meters *meterset.Set, incs []increment) error {
	if meters.Len() == 0 {
		return nil
	}
	var rows usagedata.MeterAdds
	var key []byte
	for i := range incs {
		in := &incs[i]
		if in.ev == nil {
			continue
		}
		for _, m := range meters.ForMetric(in.metric) {
			if !m.Matches(*in.ev) {
				continue
			}
			c := m.Contribution(*in.ev)
			if in.raise {
				if !in.counted.IsZero() && m.Changed.After(in.counted) {
					continue
				}
				switch m.Aggregation {
				case meter.Sum:
					c.Value = in.value
				case meter.Count, meter.UniqueCount:
					continue
				}
			}
			key = m.Group(*in.ev).AppendKey(key[:0])
			k := string(key)
			for _, g := range windows.All {
				rows.Append(in.tenant, m.Name, k, string(g), g.Start(in.at), c, in.events)
			}
		}
	}
	return usagedata.AddMeterWindows(ctx, tx, rows)
}
