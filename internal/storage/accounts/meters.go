package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage"
)

// MetersChannel is the Postgres notification channel every write of a
// meter notifies (a trigger of the meters table, migration 0011), with the
// meter's name as payload, when the transaction that made it commits. An
// aggregator listens on it (ListenMeters) to reload the definitions
// without a restart.
const MetersChannel = "meters"

// The aggregations a meter may keep.
const (
	AggregationSum         = "sum"
	AggregationCount       = "count"
	AggregationMax         = "max"
	AggregationLatest      = "latest"
	AggregationUniqueCount = "unique_count"
)

// ErrInvalidMeter is returned when the database refuses a meter definition
// (a check of the meters table: an unknown aggregation, more than 5
// group_by properties, a property without unique_count or unique_count
// without one, a malformed name...). The HTTP layer should have refused it
// first; this is the last line.
var ErrInvalidMeter = errors.New("invalid meter definition")

// Meter is one row of the meters table: what usage is kept of a metric.
// Rows read from the database have a non-nil GroupBy and Filter.
type Meter struct {
	Name        string
	Metric      string
	Aggregation string
	// GroupBy names up to 5 event properties, in order.
	GroupBy []string
	// Filter holds the property = value pairs an event must all match.
	Filter map[string]string
	// Property is the property unique_count counts; empty otherwise.
	Property    string
	Description string
	// Version is 1 when the meter is made and rises by one with each change.
	Version   int64
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Definition is m as the meter model knows it: what it counts and how,
// without the row's version and times.
func (m Meter) Definition() meter.Definition {
	return meter.Definition{
		Name: m.Name, Metric: m.Metric, Aggregation: meter.Aggregation(m.Aggregation),
		GroupBy: m.GroupBy, Filter: m.Filter, Property: m.Property, Description: m.Description,
	}
}

// meterColumns is what every read of a meter selects, in scanMeter's order.
const meterColumns = `name, metric, aggregation, group_by, filter, coalesce(property, ''), description, version, created_at, updated_at`

// PutMeter creates the meter m.Name or replaces its definition (metric,
// aggregation, group_by, filter, property, description; Version and the
// times in m are ignored) and returns the stored row, and whether it was
// created. A definition equal to the stored one writes nothing: no new
// version, no updated_at, no notification. Otherwise the version rises by
// one and the table's trigger notifies MetersChannel in the same
// statement, so the notification goes out exactly when q's transaction
// commits, and never when it rolls back.
func PutMeter(ctx context.Context, q storage.Executor, m Meter) (Meter, bool, error) {
	groupBy := m.GroupBy
	if groupBy == nil {
		groupBy = []string{} // NULL would be refused; no groups is the empty array
	}
	filter := m.Filter
	if filter == nil {
		filter = map[string]string{}
	}
	filterJSON, err := json.Marshal(filter)
	if err != nil {
		return Meter{}, false, fmt.Errorf("saving meter %s: encoding its filter: %w", m.Name, err)
	}
	var property *string
	if m.Property != "" {
		property = &m.Property
	}
	// ON CONFLICT ... WHERE leaves an equal definition as it was (no row
	// written, so no trigger fires) and returns no row.
	got, err := scanMeter(q.QueryRow(ctx, `INSERT INTO meters AS m
			(name, metric, aggregation, group_by, filter, property, description, version)
		VALUES ($1, $2, $3, $4::text[], $5::jsonb, $6, $7, 1)
		ON CONFLICT (name) DO UPDATE SET
			metric = EXCLUDED.metric, aggregation = EXCLUDED.aggregation,
			group_by = EXCLUDED.group_by, filter = EXCLUDED.filter,
			property = EXCLUDED.property, description = EXCLUDED.description,
			version = m.version + 1, updated_at = now()
		WHERE (m.metric, m.aggregation, m.group_by, m.filter, m.property, m.description)
			IS DISTINCT FROM
			(EXCLUDED.metric, EXCLUDED.aggregation, EXCLUDED.group_by, EXCLUDED.filter, EXCLUDED.property, EXCLUDED.description)
		RETURNING `+meterColumns,
		m.Name, m.Metric, m.Aggregation, groupBy, string(filterJSON), property, m.Description))
	if errors.Is(err, pgx.ErrNoRows) {
		// Unchanged: the stored row, as it is. A new statement, so it sees
		// a row another transaction committed after this one's snapshot.
		got, err = GetMeter(ctx, q, m.Name)
		if err != nil {
			return Meter{}, false, fmt.Errorf("saving meter %s: reading it back: %w", m.Name, err)
		}
		return got, false, nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23514" { // check_violation
		return Meter{}, false, fmt.Errorf("saving meter %s: %w (%s)", m.Name, ErrInvalidMeter, pgErr.ConstraintName)
	}
	if err != nil {
		return Meter{}, false, fmt.Errorf("saving meter %s: %w", m.Name, err)
	}
	return got, got.Version == 1, nil
}

// GetMeter returns the meter name, or ErrNotFound.
func GetMeter(ctx context.Context, q storage.Executor, name string) (Meter, error) {
	m, err := scanMeter(q.QueryRow(ctx, `SELECT `+meterColumns+` FROM meters WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return Meter{}, ErrNotFound
	}
	if err != nil {
		return Meter{}, fmt.Errorf("reading meter %s: %w", name, err)
	}
	return m, nil
}

// ListMeters returns every stored meter ordered by name, byte by byte
// (whatever the database's collation). Implicit meters are not stored.
func ListMeters(ctx context.Context, q storage.Executor) ([]Meter, error) {
	rows, err := q.Query(ctx, `SELECT `+meterColumns+` FROM meters ORDER BY name COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("listing meters: %w", err)
	}
	ms, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Meter, error) { return scanMeter(r) })
	if err != nil {
		return nil, fmt.Errorf("listing meters: %w", err)
	}
	return ms, nil
}

// MetersVersion returns the sum of the meters' versions. Meters are never
// deleted, so it rises by exactly one with every change PutMeter commits
// and by nothing otherwise: a loader that read the definitions at version
// v need not read them again while MetersVersion still returns v.
func MetersVersion(ctx context.Context, q storage.Executor) (int64, error) {
	var v int64
	if err := q.QueryRow(ctx, `SELECT coalesce(sum(version), 0)::bigint FROM meters`).Scan(&v); err != nil {
		return 0, fmt.Errorf("reading the meters' version: %w", err)
	}
	return v, nil
}

// ListenMeters subscribes the connection conn to MetersChannel; conn's
// WaitForNotification then returns when a transaction that changed a
// meter commits. UnlistenMeters ends it.
func ListenMeters(ctx context.Context, conn storage.Executor) error {
	if _, err := conn.Exec(ctx, `LISTEN `+MetersChannel); err != nil {
		return fmt.Errorf("listening on %s: %w", MetersChannel, err)
	}
	return nil
}

// UnlistenMeters ends ListenMeters on conn.
func UnlistenMeters(ctx context.Context, conn storage.Executor) error {
	if _, err := conn.Exec(ctx, `UNLISTEN `+MetersChannel); err != nil {
		return fmt.Errorf("unlistening on %s: %w", MetersChannel, err)
	}
	return nil
}

// scanMeter reads meterColumns from row.
func scanMeter(row pgx.Row) (Meter, error) {
	var m Meter
	var filter []byte
	if err := row.Scan(&m.Name, &m.Metric, &m.Aggregation, &m.GroupBy, &filter, &m.Property,
		&m.Description, &m.Version, &m.CreatedAt, &m.UpdatedAt); err != nil {
		return Meter{}, err
	}
	if m.GroupBy == nil {
		m.GroupBy = []string{}
	}
	if err := json.Unmarshal(filter, &m.Filter); err != nil {
		return Meter{}, fmt.Errorf("decoding the filter of meter %s: %w", m.Name, err)
	}
	if m.Filter == nil {
		m.Filter = map[string]string{}
	}
	return m, nil
}

// PlansQuotingMetric returns the plans, ordered by name byte by byte, that
// hold a quota of metric: a name in use as a metric, which a meter of
// another definition may not take (the admin API refuses it).
func PlansQuotingMetric(ctx context.Context, q storage.Executor, metric string) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT plan FROM plan_quotas WHERE metric = $1 ORDER BY plan COLLATE "C"`, metric)
	if err != nil {
		return nil, fmt.Errorf("reading the plans that quota metric %s: %w", metric, err)
	}
	plans, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reading the plans that quota metric %s: %w", metric, err)
	}
	return plans, nil
}
