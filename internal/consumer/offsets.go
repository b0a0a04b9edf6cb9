package consumer

import (
	"context"
	"maps"
	"sync"
	"time"

	"github.com/usagemeter/metering/internal/kafkalog"
)

// offsets holds, per partition, the next offset that Postgres has
// committed and Kafka has not been told of yet.
type offsets struct {
	mu      sync.Mutex
	pending map[int]int64
}

func newOffsets() *offsets { return &offsets{pending: map[int]int64{}} }

func (o *offsets) set(partition int, next int64) {
	o.mu.Lock()
	o.pending[partition] = next
	o.mu.Unlock()
}

// take returns the pending offsets and forgets them.
func (o *offsets) take() map[int]int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.pending) == 0 {
		return nil
	}
	out := maps.Clone(o.pending)
	clear(o.pending)
	return out
}

// putBack keeps offsets that failed to commit for the next try, unless a
// newer offset arrived meanwhile.
func (o *offsets) putBack(failed map[int]int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for p, off := range failed {
		if cur, ok := o.pending[p]; !ok || cur < off {
			o.pending[p] = off
		}
	}
}

// committer is the part of a group generation that commits offsets of
// the topic; *kafkalog.Generation is one.
type committer interface {
	CommitOffsets(next map[int]int64) error
}

var _ committer = (*kafkalog.Generation)(nil)

// copyOffsets commits the generation's pending offsets to Kafka every
// CommitInterval, and once more when the generation ends. A failure is
// logged and retried with the next tick; it never holds up consumption,
// since Postgres, not Kafka, is where the consumer resumes from.
func (c *Consumer) copyOffsets(ctx context.Context, gen committer, pending *offsets) {
	t := time.NewTicker(c.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.commitPending(ctx, gen, pending)
			return
		case <-t.C:
			c.commitPending(ctx, gen, pending)
		}
	}
}

func (c *Consumer) commitPending(ctx context.Context, gen committer, pending *offsets) {
	offs := pending.take()
	if offs == nil {
		return
	}
	if err := gen.CommitOffsets(offs); err != nil {
		pending.putBack(offs)
		if c.metrics != nil {
			c.metrics.KafkaCommitErrors.Inc()
		}
		c.log.DebugContext(ctx, "copying offsets to the Kafka group (informational)", "err", err)
	}
}
