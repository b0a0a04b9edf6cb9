// Package anomalydata owns usage_anomalies (the episodes of anomalous
// hourly usage internal/anomaly flags) and anomaly_progress (the last
// hour judged), and reads what the detector needs: the hourly totals of
// every tenant's meters and whether a series is older than its baseline.
//
// Invariant: an episode is inserted once, under its stable id (Insert
// reports whether this call inserted it, so the caller queues its
// usage.anomalies message only then), and the progress moves only by a
// compare-and-set (Advance), taken first in the transaction that records
// an hour's episodes, so two leaders judging one hour commit it once.
package anomalydata

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/anomaly"
	"github.com/usagemeter/metering/internal/storage"
)

// HourTotals reads, for each tenant's meter, the total of its hour
// windows starting at each of hours (by the Unix second of the start): the
// sum of the meter's groups, for implicit meters (no meters row) and
// defined sum and count meters. Max, latest and unique_count meters are
// left out: their groups' values do not add up to the meter's hour. A
// series without a window at some hour has no entry for it (0).
func HourTotals(ctx context.Context, q storage.Executor, hours []time.Time) (map[anomaly.Series]map[int64]*big.Int, error) {
	// The groups are summed here rather than by Postgres: most series are
	// implicit meters with one group, and a GROUP BY over every hour row
	// would hash them all for nothing.
	rows, err := q.Query(ctx, `SELECT w.tenant, w.meter, w.window_start, w.value::text
		FROM usage_windows w LEFT JOIN meters m ON m.name = w.meter
		WHERE w.granularity = 'hour' AND w.window_start = ANY($1::timestamptz[])
			AND (m.name IS NULL OR m.aggregation IN ('sum', 'count'))`, hours)
	if err != nil {
		return nil, fmt.Errorf("reading hourly totals: %w", err)
	}
	out := map[anomaly.Series]map[int64]*big.Int{}
	var s anomaly.Series
	var start time.Time
	var value string
	if _, err := pgx.ForEachRow(rows, []any{&s.Tenant, &s.Meter, &start, &value}, func() error {
		v, ok := new(big.Int).SetString(value, 10)
		if !ok {
			// Hour windows of sum and count meters hold integers; a
			// fraction here is a broken invariant, not data to judge.
			return fmt.Errorf("hour window %q of %s/%s is not an integer", value, s.Tenant, s.Meter)
		}
		ts := out[s]
		if ts == nil {
			ts = map[int64]*big.Int{}
			out[s] = ts
		}
		if sum, ok := ts[start.Unix()]; ok {
			sum.Add(sum, v)
		} else {
			ts[start.Unix()] = v
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("reading hourly totals: %w", err)
	}
	return out, nil
}

// Mature reports whether s has a day window starting at or before since:
// usage from before its baseline began, so the baseline is its history
// and not the months before it existed.
func Mature(ctx context.Context, q storage.Executor, s anomaly.Series, since time.Time) (bool, error) {
	var ok bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM usage_windows
		WHERE tenant = $1 AND meter = $2 AND granularity = 'day' AND window_start <= $3)`, s.Tenant, s.Meter, since).Scan(&ok); err != nil {
		return false, fmt.Errorf("reading the history of %s/%s: %w", s.Tenant, s.Meter, err)
	}
	return ok, nil
}

// Progress reads the last hour judged; false when none was yet.
func Progress(ctx context.Context, q storage.Executor) (time.Time, bool, error) {
	var t time.Time
	err := q.QueryRow(ctx, `SELECT judged_through FROM anomaly_progress`).Scan(&t)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("reading anomaly progress: %w", err)
	}
	return t, true, nil
}

// Advance moves the last hour judged from from (zero: none recorded) to
// to, a compare-and-set: it reports false, changing nothing, when the
// stored hour is not from. It takes the row's lock, so call it first in
// the transaction that records the hour.
func Advance(ctx context.Context, q storage.Executor, from, to time.Time) (bool, error) {
	var sql string
	args := []any{to}
	if from.IsZero() {
		sql = `INSERT INTO anomaly_progress (judged_through) VALUES ($1) ON CONFLICT (singleton) DO NOTHING`
	} else {
		sql = `UPDATE anomaly_progress SET judged_through = $1, updated_at = now() WHERE judged_through = $2`
		args = append(args, from)
	}
	tag, err := q.Exec(ctx, sql, args...)
	if err != nil {
		return false, fmt.Errorf("advancing anomaly progress to %s: %w", to.Format(time.RFC3339), err)
	}
	return tag.RowsAffected() == 1, nil
}

// Open reads the episodes not ended, one per series at most.
func Open(ctx context.Context, q storage.Executor) (map[anomaly.Series]anomaly.Episode, error) {
	rows, err := q.Query(ctx, `SELECT id::text, tenant, meter, direction, hour, last_hour
		FROM usage_anomalies WHERE ended_at IS NULL ORDER BY hour`)
	if err != nil {
		return nil, fmt.Errorf("reading open anomalies: %w", err)
	}
	out := map[anomaly.Series]anomaly.Episode{}
	var e anomaly.Episode
	if _, err := pgx.ForEachRow(rows, []any{&e.ID, &e.Tenant, &e.Meter, &e.Direction, &e.Hour, &e.LastHour}, func() error {
		e.Hour, e.LastHour = e.Hour.UTC(), e.LastHour.UTC()
		out[e.Series] = e
		return nil
	}); err != nil {
		return nil, fmt.Errorf("reading open anomalies: %w", err)
	}
	return out, nil
}

// Insert records a newly flagged episode and reports whether this call
// inserted it (false: a row of its id exists, from an earlier judgement
// of the same hour).
func Insert(ctx context.Context, q storage.Executor, a anomaly.Anomaly) (bool, error) {
	p := a.Payload()
	tag, err := q.Exec(ctx, `INSERT INTO usage_anomalies
			(id, tenant, meter, direction, hour, last_hour, observed, expected, score, sensitivity, detected_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7::numeric, $8::numeric, $9::numeric, $10::numeric, $11)
		ON CONFLICT DO NOTHING`,
		a.ID, a.Tenant, a.Meter, string(a.Direction), a.Hour, a.LastHour, p.Observed, p.Expected, p.Score, p.Sensitivity, a.DetectedAt.UTC().Truncate(time.Second))
	if err != nil {
		return false, fmt.Errorf("recording anomaly %s: %w", a.ID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Extend moves an open episode's latest anomalous hour to lastHour.
func Extend(ctx context.Context, q storage.Executor, e anomaly.Extended) error {
	if _, err := q.Exec(ctx, `UPDATE usage_anomalies SET last_hour = $2
		WHERE id = $1 AND ended_at IS NULL AND last_hour < $2`, e.ID, e.LastHour); err != nil {
		return fmt.Errorf("extending anomaly %s: %w", e.ID, err)
	}
	return nil
}

// End records the end of an open episode.
func End(ctx context.Context, q storage.Executor, e anomaly.Ended) error {
	if _, err := q.Exec(ctx, `UPDATE usage_anomalies SET ended_at = $2
		WHERE id = $1 AND ended_at IS NULL`, e.ID, e.EndedAt); err != nil {
		return fmt.Errorf("ending anomaly %s: %w", e.ID, err)
	}
	return nil
}

// Stored is a recorded episode: its message payload, its latest
// anomalous hour and its end (nil while open).
type Stored struct {
	anomaly.Payload
	LastHour time.Time  `json:"last_hour"`
	EndedAt  *time.Time `json:"ended_at"`
}

// Filter selects episodes for List; zero fields select all. From and To
// bound the first anomalous hour: From <= hour < To.
type Filter struct {
	Tenant, Meter string
	From, To      time.Time
	// Limit is the most rows returned; 0 or less is 200.
	Limit int
}

// List reads episodes matching f, newest first (by first hour, then id).
func List(ctx context.Context, q storage.Executor, f Filter) ([]Stored, error) {
	if f.Limit <= 0 {
		f.Limit = 200
	}
	var from, to *time.Time
	if !f.From.IsZero() {
		from = &f.From
	}
	if !f.To.IsZero() {
		to = &f.To
	}
	rows, err := q.Query(ctx, `SELECT id::text, direction, tenant, meter, hour, observed::text, expected::text, score::text,
			sensitivity::text, detected_at, last_hour, ended_at
		FROM usage_anomalies
		WHERE ($1 = '' OR tenant = $1) AND ($2 = '' OR meter = $2)
			AND ($3::timestamptz IS NULL OR hour >= $3) AND ($4::timestamptz IS NULL OR hour < $4)
		ORDER BY hour DESC, id LIMIT $5`, f.Tenant, f.Meter, from, to, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("listing anomalies: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Stored, error) {
		var s Stored
		var dir string
		var hour, detected time.Time
		if err := r.Scan(&s.ID, &dir, &s.Tenant, &s.Meter, &hour, &s.Observed, &s.Expected, &s.Score,
			&s.Sensitivity, &detected, &s.LastHour, &s.EndedAt); err != nil {
			return s, err
		}
		s.Type = anomaly.TypeSpike
		if anomaly.Direction(dir) == anomaly.Drop {
			s.Type = anomaly.TypeDrop
		}
		s.Hour, s.DetectedAt = hour.UTC().Format(time.RFC3339), detected.UTC().Format(time.RFC3339)
		s.LastHour = s.LastHour.UTC()
		if s.EndedAt != nil {
			t := s.EndedAt.UTC()
			s.EndedAt = &t
		}
		return s, nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing anomalies: %w", err)
	}
	return out, nil
}
