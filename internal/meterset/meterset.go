// Package meterset keeps the meter definitions in force for the rollup:
// read from the meters table, indexed by metric, and read again only when
// the table changed.
//
// Invariant: Current, called inside a batch's transaction, answers the
// definitions that transaction sees, never older ones: it compares the
// cached definitions' version with the table's (accounts.MetersVersion, one
// tiny query) in that transaction and reads them again when they differ,
// so a batch that starts after a change commits counts with the change
// (TestCurrentSeesACommittedChange). Listen only reads them sooner, when
// a change is notified, so that no batch has to wait for the read.
package meterset

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/accounts"
)

// Meter is one defined meter and when its definition last changed.
type Meter struct {
	meter.Definition
	// Version rises by one with each change of the definition.
	Version int64
	// Changed is when the definition last changed (the database's clock).
	// An event counted before it was counted with another definition, or
	// none.
	Changed time.Time
}

// Set is the definitions of one version. It is never modified: a change
// makes a new Set.
type Set struct {
	version  int64
	byMetric map[string][]Meter
	byName   map[string]Meter
}

// Version is the sum of the definitions' versions (accounts.MetersVersion).
func (s *Set) Version() int64 { return s.version }

// Len is the number of defined meters.
func (s *Set) Len() int { return len(s.byName) }

// ForMetric returns the defined meters of metric, in name order. The
// caller must not modify the slice.
func (s *Set) ForMetric(metric string) []Meter { return s.byMetric[metric] }

// Named returns the defined meter called name.
func (s *Set) Named(name string) (Meter, bool) {
	m, ok := s.byName[name]
	return m, ok
}

// Shadows reports whether a defined meter takes the name of metric's
// implicit meter without being that implicit meter (see
// meter.Implicit): events of metric would then write two meters' windows
// under one name, so the rollup refuses them.
func (s *Set) Shadows(metric string) (Meter, bool) {
	m, ok := s.byName[metric]
	if !ok || m.IsImplicit() {
		return Meter{}, false
	}
	return m, true
}

func newSet(version int64, rows []accounts.Meter) *Set {
	s := &Set{version: version, byMetric: map[string][]Meter{}, byName: make(map[string]Meter, len(rows))}
	for _, r := range rows {
		m := Meter{Definition: r.Definition(), Version: r.Version, Changed: r.UpdatedAt}
		s.byName[m.Name] = m
		if m.IsImplicit() {
			continue // the implicit meter counts these events already
		}
		s.byMetric[m.Metric] = append(s.byMetric[m.Metric], m)
	}
	return s
}

// Loader caches the Set last read. It is safe for concurrent use.
type Loader struct {
	mu  sync.Mutex
	set *Set
}

// NewLoader returns a Loader that has read nothing yet.
func NewLoader() *Loader { return &Loader{} }

// Cached returns the Set last read, or nil.
func (l *Loader) Cached() *Set {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.set
}

// Current returns the definitions q sees: the cached Set if its version is
// the table's, else a Set read through q (and cached).
func (l *Loader) Current(ctx context.Context, q storage.Executor) (*Set, error) {
	v, err := accounts.MetersVersion(ctx, q)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	cached := l.set
	l.mu.Unlock()
	if cached != nil && cached.version == v {
		return cached, nil
	}
	return l.read(ctx, q, v)
}

// read reads the definitions through q. v is the version q saw; in a
// transaction at read committed, ListMeters may see a later change than
// v, which is then read again at the next call, never missed.
func (l *Loader) read(ctx context.Context, q storage.Executor, v int64) (*Set, error) {
	rows, err := accounts.ListMeters(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("loading meter definitions: %w", err)
	}
	// The version of what was read, which may be newer than v.
	var read int64
	for _, r := range rows {
		read += r.Version
	}
	s := newSet(read, rows)
	l.mu.Lock()
	if l.set == nil || l.set.version < s.version {
		l.set = s
	}
	l.mu.Unlock()
	return s, nil
}

// Listen reads the definitions whenever a change is notified on
// accounts.MetersChannel, until ctx ends, so that batches find them
// cached. It holds one connection of pool; when that connection fails, it
// takes another after a second. A missed notification costs only the
// read at the next batch.
func (l *Loader) Listen(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	for ctx.Err() == nil {
		if err := l.listenOnce(ctx, pool); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "listening for meter changes", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

func (l *Loader) listenOnce(ctx context.Context, pool *pgxpool.Pool) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquiring a connection: %w", err)
	}
	defer func() {
		// A connection left listening goes back to the pool only clean.
		_ = accounts.UnlistenMeters(context.WithoutCancel(ctx), conn)
		conn.Release()
	}()
	if err := accounts.ListenMeters(ctx, conn); err != nil {
		return err
	}
	for {
		// Read after subscribing, so a change between the two is seen.
		if _, err := l.Current(ctx, conn); err != nil {
			return err
		}
		if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("waiting for a meter change: %w", err)
		}
	}
}
