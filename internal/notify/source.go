package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/storage/credits"
	"github.com/usagemeter/metering/internal/storage/webhooks"
)

// Reader reads the source topics and queues their notifications. Its
// offsets live in Postgres (notification_offsets) and move in the
// transaction that queues what the records they pass carried, so a
// record is turned into deliveries once, whatever restarts; and were it
// read again, the deliveries' unique (endpoint, event id) queues nothing
// twice. A partition the reader has never stored starts at its log end:
// an installation does not notify the past.
type Reader struct {
	Cluster kafkalog.Cluster
	DB      *pgxpool.Pool
	Policy  Policy
	// Topics read; nil means Topics.
	Topics []string
	// Rescan is how often the topics' partitions are listed again, to read
	// new ones (default 1 minute).
	Rescan time.Duration
	Now    func() time.Time
	Log    *slog.Logger
}

// errFenced stops a partition whose stored offset another reader moved.
var errFenced = errors.New("another reader moved the stored offset")

func (r *Reader) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Run reads every partition of the topics until ctx ends.
func (r *Reader) Run(ctx context.Context) error {
	topics := r.Topics
	if topics == nil {
		topics = Topics
	}
	rescan := r.Rescan
	if rescan <= 0 {
		rescan = time.Minute
	}
	type part struct {
		topic     string
		partition int
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	running := map[part]bool{}
	var mu sync.Mutex
	tick := time.NewTicker(rescan)
	defer tick.Stop()
	for {
		for _, topic := range topics {
			ends, err := r.Cluster.LogEnds(ctx, topic)
			if err != nil {
				if ctx.Err() == nil {
					r.Log.WarnContext(ctx, "listing the partitions of a notification topic", "topic", topic, "err", err)
				}
				continue
			}
			for p, end := range ends {
				k := part{topic, p}
				mu.Lock()
				started := running[k]
				running[k] = true
				mu.Unlock()
				if started {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := r.readPartition(ctx, topic, p, end)
					if err != nil && ctx.Err() == nil {
						r.Log.WarnContext(ctx, "reading a notification topic stopped; it resumes at the next rescan", "topic", topic, "partition", p, "err", err)
					}
					mu.Lock()
					delete(running, k)
					mu.Unlock()
				}()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// readPartition reads partition of topic from its stored offset (its log
// end, stored now, when none is stored) until ctx ends or it fails.
func (r *Reader) readPartition(ctx context.Context, topic string, partition int, end int64) error {
	// The end is read again: the one passed in may predate the last
	// commit of the partition's previous reader (stopped by now).
	if ends, err := r.Cluster.LogEnds(ctx, topic); err == nil {
		if e, ok := ends[partition]; ok {
			end = e
		}
	}
	stored, err := webhooks.Offsets(ctx, r.DB, topic)
	if err != nil {
		return err
	}
	next, ok := stored[partition]
	if !ok {
		if _, err := webhooks.AdvanceOffset(ctx, r.DB, topic, partition, -1, end); err != nil {
			return err
		}
		if stored, err = webhooks.Offsets(ctx, r.DB, topic); err != nil {
			return err
		}
		next = stored[partition]
	}
	// Records retention deleted before they were read, or a log that ends
	// below the stored offset (the topic made again): carry on from what
	// the log holds, and say what was skipped.
	if logStart, err := r.Cluster.LogStart(ctx, topic, partition); err == nil && next < logStart {
		r.Log.WarnContext(ctx, "notification records were deleted by retention before they were read; skipping them", "topic", topic,
			"partition", partition, "from", next, "to", logStart)
		if err := r.move(ctx, topic, partition, next, logStart); err != nil {
			return err
		}
		next = logStart
	} else if next > end {
		r.Log.WarnContext(ctx, "the stored notification offset is past the log end (was the topic made again?); reading from the end", "topic", topic,
			"partition", partition, "stored", next, "end", end)
		if err := r.move(ctx, topic, partition, next, end); err != nil {
			return err
		}
		next = end
	}
	return r.Cluster.Read(ctx, topic, partition, kafkalog.ReadOptions{From: next, End: -1, BatchSize: 500, BatchWait: 200 * time.Millisecond},
		func(b kafkalog.Batch) error {
			to := b.Records[len(b.Records)-1].Offset + 1
			if _, err := r.Apply(ctx, topic, partition, next, to, b.Records); err != nil {
				return err
			}
			next = to
			return nil
		})
}

// move moves the stored offset of partition of topic from from to to.
func (r *Reader) move(ctx context.Context, topic string, partition int, from, to int64) error {
	ok, err := webhooks.AdvanceOffset(ctx, r.DB, topic, partition, from, to)
	if err == nil && !ok {
		err = fmt.Errorf("%s/%d: %w", topic, partition, errFenced)
	}
	return err
}

// Apply queues the notifications of recs, read from partition of topic,
// and moves its stored offset from from to to, in one transaction. It
// returns how many deliveries were new. A record that is no notification
// is skipped; one that cannot be read is logged and skipped.
func (r *Reader) Apply(ctx context.Context, topic string, partition int, from, to int64, recs []record.Record) (int, error) {
	var evs []Event
	for _, rec := range recs {
		ev, err := Decode(topic, rec.Value)
		if errors.Is(err, ErrIgnored) {
			continue
		}
		if err != nil {
			if r.Log != nil {
				r.Log.WarnContext(ctx, "skipping a source message that is no readable notification", "topic", topic,
					"partition", partition, "offset", rec.Offset, "err", err)
			}
			continue
		}
		evs = append(evs, ev)
	}
	n := 0
	err := pgx.BeginFunc(ctx, r.DB, func(tx pgx.Tx) error {
		ok, err := webhooks.AdvanceOffset(ctx, tx, topic, partition, from, to)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%s/%d: %w", topic, partition, errFenced)
		}
		n, err = Queue(ctx, tx, r.Policy, r.now(), evs...)
		return err
	})
	return n, err
}

// BillProjector returns the spend of tenant's current period at now:
// ProjectedTotal, Total, Currency and the period (Threshold unset).
type BillProjector func(ctx context.Context, tenant string, now time.Time) (Spend, error)

// Checks are the periodic notifications: grants about to expire, and
// projected bills past endpoints' spend thresholds.
type Checks struct {
	DB     *pgxpool.Pool
	Policy Policy
	// GrantWarning is how long before a grant expires grant.expiring is
	// sent (default 3 days).
	GrantWarning time.Duration
	Project      BillProjector
	Now          func() time.Time
	Log          *slog.Logger
}

// Run checks now, then every interval, until ctx ends.
func (c *Checks) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := c.RunOnce(ctx); err != nil && ctx.Err() == nil && c.Log != nil {
			c.Log.WarnContext(ctx, "webhook checks failed; retrying at the next interval", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RunOnce runs both checks and returns the deliveries they queued.
func (c *Checks) RunOnce(ctx context.Context) (int, error) {
	now := time.Now()
	if c.Now != nil {
		now = c.Now()
	}
	g, err1 := c.grantsExpiring(ctx, now)
	s, err2 := c.spend(ctx, now)
	return g + s, errors.Join(err1, err2)
}

func (c *Checks) grantsExpiring(ctx context.Context, now time.Time) (int, error) {
	warn := c.GrantWarning
	if warn <= 0 {
		warn = 72 * time.Hour
	}
	gs, err := credits.Expired(ctx, c.DB, now, now.Add(warn))
	if err != nil || len(gs) == 0 {
		return 0, err
	}
	var evs []Event
	for _, g := range gs {
		if g.VoidedAt != nil || g.ExpiresAt == nil {
			continue
		}
		ev, err := GrantExpiring(g.Tenant, Grant{ID: g.ID, Meter: g.Meter, Amount: g.Amount, ExpiresAt: *g.ExpiresAt}, now)
		if err != nil {
			return 0, err
		}
		evs = append(evs, ev)
	}
	return Queue(ctx, c.DB, c.Policy, now, evs...)
}

func (c *Checks) spend(ctx context.Context, now time.Time) (int, error) {
	if c.Project == nil {
		return 0, nil
	}
	endpoints, err := webhooks.WithKind(ctx, c.DB, KindSpendThreshold)
	if err != nil {
		return 0, err
	}
	thresholds := map[string][]string{}
	var tenants []string
	for _, e := range endpoints {
		if _, ok := thresholds[e.Tenant]; !ok {
			tenants = append(tenants, e.Tenant)
		}
		for _, t := range e.SpendThresholds {
			if !slices.Contains(thresholds[e.Tenant], t) {
				thresholds[e.Tenant] = append(thresholds[e.Tenant], t)
			}
		}
	}
	var evs []Event
	var errs []error
	for _, tenant := range tenants {
		if len(thresholds[tenant]) == 0 {
			continue
		}
		s, err := c.Project(ctx, tenant, now)
		if err != nil {
			errs = append(errs, fmt.Errorf("projecting the bill of %s: %w", tenant, err))
			continue
		}
		reached, err := Reached(s.ProjectedTotal, thresholds[tenant])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, t := range reached {
			s.Threshold = t
			ev, err := SpendThreshold(tenant, s, now)
			if err != nil {
				return 0, err
			}
			evs = append(evs, ev)
		}
	}
	n, err := Queue(ctx, c.DB, c.Policy, now, evs...)
	return n, errors.Join(append(errs, err)...)
}
