package rollup

import (
	"context"
	"fmt"
	"math"
	"time"

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

// meterGranularities are the windows a defined meter keeps: hour, day and
// month. Minute windows are kept for implicit meters only: a defined
// meter's groups multiply its windows, and nothing reads a defined meter
// by the minute (quotas and billing read periods).
var meterGranularities = []windows.Granularity{windows.Hour, windows.Day, windows.Month}

// addToMeters adds incs to the windows of the defined meters their events
// match, in meterGranularities. A new event adds its contribution to each;
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
	f := newMeterFold(len(incs))
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
			// Postgres keeps microseconds; fold latest as it compares.
			c.Time = c.Time.Truncate(time.Microsecond)
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
			for _, g := range meterGranularities {
				f.add(meterWindowKey{in.tenant, m.Name, k, g, g.Start(in.at)}, c, in.events)
			}
		}
	}
	return usagedata.AddMeterWindows(ctx, tx, f.rows)
}

type meterWindowKey struct {
	tenant, meter, group string
	g                    windows.Granularity
	start                time.Time
}

// meterFold folds a batch's contributions to one row per window (and,
// for unique_count, per window and value), as the events would fold, so
// Postgres writes each window once.
type meterFold struct {
	rows    usagedata.MeterAdds
	row     map[meterWindowKey]int
	uniques map[uniqueKey]bool
}

type uniqueKey struct {
	w     meterWindowKey
	value string
}

func newMeterFold(n int) *meterFold {
	return &meterFold{row: make(map[meterWindowKey]int, n), uniques: map[uniqueKey]bool{}}
}

func (f *meterFold) append(k meterWindowKey, c meter.Contribution, events int64) {
	f.rows.Append(k.tenant, k.meter, k.group, string(k.g), k.start, c, events)
}

func (f *meterFold) add(k meterWindowKey, c meter.Contribution, events int64) {
	if c.Aggregation == meter.UniqueCount {
		// One row per distinct value of the window; the window's events
		// go on its first row.
		if c.HasDistinct {
			u := uniqueKey{k, c.Distinct}
			if f.uniques[u] {
				c.HasDistinct = false
			} else {
				f.uniques[u] = true
				f.append(k, c, events)
				return
			}
		}
		if i, ok := f.row[k]; ok {
			f.rows.Events[i] += events
			return
		}
		f.row[k] = f.rows.Len()
		f.append(k, c, events)
		return
	}
	i, ok := f.row[k]
	if !ok {
		f.row[k] = f.rows.Len()
		f.append(k, c, events)
		return
	}
	r := &f.rows
	switch c.Aggregation {
	case meter.Sum:
		if r.Values[i] > math.MaxInt64-c.Value {
			// The fold would overflow a row: a row of its own.
			f.append(k, c, events)
			return
		}
		r.Values[i] += c.Value
	case meter.Max:
		r.Values[i] = max(r.Values[i], c.Value)
	case meter.Latest:
		held := meter.Contribution{Time: r.Times[i], ID: r.IDs[i]}
		if c.Later(held) || !held.Later(c) && c.Value > r.Values[i] {
			r.Values[i], r.Times[i], r.IDs[i] = c.Value, c.Time, c.ID
		}
	}
	r.Events[i] += events
}
