package consumer

import (
	"context"
	"strconv"
	"time"
)

// watchIdle returns, ending the member's generation so that it rejoins
// and the group rebalances, when a partition that another member owns has
// records waiting and its stored offset has not moved for SessionTimeout
// + 5 s. The coordinator should have noticed a dead owner by then (a live
// owner working through a backlog commits every batch, well within it:
// with the session timeout alone, big batches under the race detector
// tripped it); this covers
// an owner the coordinator keeps in the group without heartbeats (kfake
// keeps a member that dies between its JoinGroup and SyncGroup once the
// leader has synced; measured). In the rebalance a dead owner does not
// rejoin and loses its partitions. It does nothing while this member's
// own partitions stall, since an outage stalls everyone and rebalancing
// would not help. At each look it also records the watermark of this
// member's partitions that are read to their log end (caughtUp).
func (c *Consumer) watchIdle(ctx context.Context, owned map[int]bool) {
	t := time.NewTicker(max(c.cfg.SessionTimeout/4, 100*time.Millisecond))
	defer t.Stop()
	type progress struct {
		next  int64
		since time.Time
	}
	seen := map[int]progress{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if c.stalls.err() != nil {
			clear(seen)
			continue
		}
		// at is taken before the read of the log ends: every record
		// appended by then lies below them.
		at := time.Now()
		ends, err := c.cluster().LogEnds(ctx, c.cfg.Topic)
		if err != nil {
			continue
		}
		stored, err := c.agg.StoredOffsets(ctx)
		if err != nil {
			continue
		}
		c.caughtUp(ctx, owned, ends, stored, at)
		now := time.Now()
		for p, end := range ends {
			next, ok := stored[p]
			if !ok {
				next = -1
			}
			if owned[p] || next >= end {
				delete(seen, p)
				continue
			}
			pr, ok := seen[p]
			if !ok || pr.next != next {
				seen[p] = progress{next, now}
				continue
			}
			if idle := now.Sub(pr.since); idle >= c.cfg.SessionTimeout+5*time.Second {
				if c.metrics != nil {
					c.metrics.IdleRebalances.WithLabelValues(strconv.Itoa(p)).Inc()
				}
				c.log.WarnContext(ctx, "a partition of another member has records waiting and does not move; rejoining so the group rebalances",
					"partition", p, "offset", next, "log_end", end, "idle", idle.Round(time.Millisecond))
				return
			}
		}
	}
}

// caughtUp moves the watermark of each owned partition whose stored offset
// has reached its log end (ends, read at at) up to at: nothing appended by
// then waits. An owned partition without a stored offset whose log holds
// no record gets its row, so that period completeness sees every
// partition. Failures are logged and retried at the next tick.
func (c *Consumer) caughtUp(ctx context.Context, owned map[int]bool, ends, stored map[int]int64, at time.Time) {
	for p, end := range ends {
		if !owned[p] {
			continue
		}
		next, ok := stored[p]
		empty := false
		if !ok {
			start, err := c.cluster().LogStart(ctx, c.cfg.Topic, p)
			if err != nil || start < end {
				continue
			}
			empty = true
		} else if next < end {
			continue
		}
		if _, err := c.agg.CaughtUp(ctx, p, end, at, empty); err != nil && ctx.Err() == nil {
			c.log.WarnContext(ctx, "recording a caught-up partition's watermark", "partition", p, "err", err)
		}
	}
}
