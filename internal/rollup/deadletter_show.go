package rollup

import (
	"context"

	"github.com/usagemeter/metering/internal/storage/deadletters"
)

// ErrNoDeadLetter is returned by Get for an id no dead letter has.
var ErrNoDeadLetter = deadletters.ErrNoLetter

// Get returns the dead letter id whatever its status (or ErrNoDeadLetter),
// its key and payload shown as List shows them.
func (q *DeadLetters) Get(ctx context.Context, id int64) (DeadLetter, error) {
	l, err := deadletters.UsageLetterByID(ctx, q.pool, id)
	if err != nil {
		return DeadLetter{}, err
	}
	d := DeadLetter{
		ID: l.ID, Tenant: l.Tenant, Kind: recordKind(l.Headers), Error: l.Error, ErrorClass: l.ErrorClass, SourceTopic: l.SourceTopic,
		SourcePartition: l.SourcePartition, SourceOffset: l.SourceOffset,
		FailedAt: l.FailedAt, Status: l.Status, ResolvedAt: l.ResolvedAt,
	}
	d.Key, d.KeyNull = printable(l.Key)
	d.Payload, d.PayloadNull = printable(l.Payload)
	return d, nil
}
