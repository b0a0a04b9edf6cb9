package rollup

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/billingcycle"
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
func addToMeters(ctx context.Context, tx pgx.Tx, meters *meterset.Set, periods billingcycle.Schedules, incs []increment) error {
	if meters.Len() == 0 {
		return nil
	}
	n := 0
	for i := range incs {
		n += len(meters.ForMetric(incs[i].metric))
	}
	f := newMeterFold(n)
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
			f.add(meterGroupKey{in.tenant, m.Name, string(key)}, periods.Of(in.tenant), in.at, c, in.events)
		}
	}
	return usagedata.AddMeterWindows(ctx, tx, f.rows)
}

// meterGroupKey is one group of one tenant's meter.
type meterGroupKey struct {
	tenant, meter, group string
}

// meterFold folds a batch's contributions to one row per window (and,
// for unique_count, per window and value), as the events would fold, so
// Postgres writes each window once. It finds a contribution's rows with
// one lookup of its group (and one of its value): a group's windows in a
// batch are few (its events' hours), so each granularity keeps them in a
// short list.
type meterFold struct {
	rows    usagedata.MeterAdds
	groups  map[meterGroupKey]*foldGroup
	uniques map[uniqueKey]*foldStarts
}

// foldGroup holds the rows of one group's windows in the batch, per
// granularity of meterGranularities.
type foldGroup [3][]foldRow

type foldRow struct {
	start time.Time
	row   int
}

// foldStarts holds the window starts, per granularity, a unique value was
// already seen in.
type foldStarts [3][]time.Time

type uniqueKey struct {
	group meterGroupKey
	value string
}

func newMeterFold(n int) *meterFold {
	f := &meterFold{groups: make(map[meterGroupKey]*foldGroup, n), uniques: map[uniqueKey]*foldStarts{}}
	f.rows.Grow(n * len(meterGranularities))
	return f
}

func (f *meterFold) append(k meterGroupKey, g windows.Granularity, start time.Time, c meter.Contribution, events int64) {
	f.rows.Append(k.tenant, k.meter, k.group, string(g), start, c, events)
}

// add folds contribution c of an event at time at into the group's window
// of each granularity (a month window: the tenant's billing period in
// sched).
func (f *meterFold) add(k meterGroupKey, sched billingcycle.Schedule, at time.Time, c meter.Contribution, events int64) {
	grp := f.groups[k]
	if grp == nil {
		grp = &foldGroup{}
		f.groups[k] = grp
	}
	var seen *foldStarts
	if c.Aggregation == meter.UniqueCount && c.HasDistinct {
		u := uniqueKey{k, c.Distinct}
		if seen = f.uniques[u]; seen == nil {
			seen = &foldStarts{}
			f.uniques[u] = seen
		}
	}
	for gi, g := range meterGranularities {
		start := g.StartIn(sched, at)
		i := -1
		for _, r := range grp[gi] {
			if r.start.Equal(start) {
				i = r.row
				break
			}
		}
		if c.Aggregation == meter.UniqueCount {
			f.addUnique(k, g, start, c, events, i, &grp[gi], seen, gi)
			continue
		}
		if i < 0 {
			grp[gi] = append(grp[gi], foldRow{start, f.rows.Len()})
			f.append(k, g, start, c, events)
			continue
		}
		f.fold(i, k, g, start, c, events, &grp[gi])
	}
}

// addUnique folds a unique_count contribution: one row per distinct value
// of the window, the window's events on its first row. i is the window's
// first row in the batch, -1 for none yet.
func (f *meterFold) addUnique(k meterGroupKey, g windows.Granularity, start time.Time, c meter.Contribution, events int64, i int, rows *[]foldRow, seen *foldStarts, gi int) {
	if seen != nil {
		if !slices.ContainsFunc(seen[gi], start.Equal) {
			seen[gi] = append(seen[gi], start)
			if i < 0 {
				*rows = append(*rows, foldRow{start, f.rows.Len()})
			}
			f.append(k, g, start, c, events)
			return
		}
		c.HasDistinct = false
	}
	if i >= 0 {
		f.rows.Events[i] += events
		return
	}
	*rows = append(*rows, foldRow{start, f.rows.Len()})
	f.append(k, g, start, c, events)
}

// fold folds contribution c into row i, as the meter's aggregation folds.
func (f *meterFold) fold(i int, k meterGroupKey, g windows.Granularity, start time.Time, c meter.Contribution, events int64, rows *[]foldRow) {
	r := &f.rows
	switch c.Aggregation {
	case meter.Sum:
		if r.Values[i] > math.MaxInt64-c.Value {
			// The fold would overflow a row: a row of its own, which
			// the window's later contributions fold into.
			for j := range *rows {
				if (*rows)[j].row == i {
					(*rows)[j].row = r.Len()
				}
			}
			f.append(k, g, start, c, events)
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
