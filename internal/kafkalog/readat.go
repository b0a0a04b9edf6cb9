package kafkalog

import (
	"context"
	"fmt"

	"github.com/usagemeter/metering/internal/record"
)

// readAtGap is the widest run of offsets ReadAt reads through between two
// wanted ones; past it, it seeks.
const readAtGap = 512

// ReadAt calls fn once for each of offsets (ascending and distinct) of
// partition of topic, in that order: with the record the log holds there,
// or with nil and why the log no longer holds it (retention deleted it,
// it lies past the log's end, or the log skips it). Records between the
// wanted offsets are read and dropped, never kept, so memory is bounded
// by a batch of the log; far apart offsets are reached by seeking. A
// failure to read is an error (ctx bounds the whole call).
func (c Cluster) ReadAt(ctx context.Context, topic string, partition int, offsets []int64, fn func(offset int64, rec *record.Record, missing string) error) error {
	if len(offsets) == 0 {
		return nil
	}
	start, err := c.LogStart(ctx, topic, partition)
	if err != nil {
		return err
	}
	ends, err := c.LogEnds(ctx, topic)
	if err != nil {
		return err
	}
	end, ok := ends[partition]
	if !ok {
		return fmt.Errorf("reading partition %d of %s: no log end", partition, topic)
	}
	i := 0
	for i < len(offsets) {
		off := offsets[i]
		switch {
		case off < start:
			if err := fn(off, nil, fmt.Sprintf("deleted from partition %d by retention (the log starts at offset %d)", partition, start)); err != nil {
				return err
			}
			i++
			continue
		case off >= end:
			if err := fn(off, nil, fmt.Sprintf("past the end of partition %d (offset %d)", partition, end)); err != nil {
				return err
			}
			i++
			continue
		}
		// A run of offsets close together and inside the log: one read.
		j := i + 1
		for j < len(offsets) && offsets[j] < end && offsets[j]-offsets[j-1] <= readAtGap {
			j++
		}
		run := offsets[i:j]
		k := 0
		err := c.Read(ctx, topic, partition, ReadOptions{From: run[0], End: run[len(run)-1] + 1, BatchSize: 1000}, func(b Batch) error {
			for r := range b.Records {
				rec := &b.Records[r]
				for k < len(run) && run[k] < rec.Offset {
					if err := fn(run[k], nil, fmt.Sprintf("not in partition %d (the log skips offset %d)", partition, run[k])); err != nil {
						return err
					}
					k++
				}
				if k < len(run) && run[k] == rec.Offset {
					if err := fn(run[k], rec, ""); err != nil {
						return err
					}
					k++
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		for ; k < len(run); k++ {
			if err := fn(run[k], nil, fmt.Sprintf("not in partition %d (the log skips offset %d)", partition, run[k])); err != nil {
				return err
			}
		}
		i = j
	}
	return nil
}
