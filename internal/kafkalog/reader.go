package kafkalog

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/internal/record"
)

// ReadOptions say where Read starts and stops and how it cuts batches.
type ReadOptions struct {
	// From is the first offset to read; a negative From is the log start.
	From int64
	// End, when not negative, is the offset Read stops before: it returns
	// nil once every record below End was handed over. A negative End
	// reads until ctx ends.
	End int64
	// BatchSize caps a batch; 0 means DefaultBatchSize.
	BatchSize int
	// BatchWait, when set, hands a batch over at most BatchWait after its
	// first record; zero waits for a full batch or End, or, without End,
	// means DefaultBatchWait.
	BatchWait time.Duration
}

// DefaultBatchSize is the batch cap of a Read that names none, and
// DefaultBatchWait the batch time of an unbounded Read that names none.
const (
	DefaultBatchSize = 10000
	DefaultBatchWait = 100 * time.Millisecond
)

// Batch is what Read hands over: records of one partition in offset
// order, and the partition's high watermark as of the last one's fetch.
type Batch struct {
	Records       []record.Record
	HighWaterMark int64
}

// Read reads partition of topic from opt.From, cuts the records into
// batches and hands each to fn in offset order, until End (nil), ctx ends
// (an error wrapping ctx's), fn fails (its error, as it is) or reading
// fails. A batch blocks for its first record, then takes more until it is
// full, BatchWait has passed since the first, or End is reached.
//
// fn must not keep the batch's slice after it returns: Read reuses it, so
// a steady read allocates no slice per batch. The records' bytes are
// fn's to keep. An offset that retention has deleted is an error, not
// retried silently.
func (c Cluster) Read(ctx context.Context, topic string, partition int, opt ReadOptions, fn func(Batch) error) error {
	if opt.From >= 0 && opt.End >= 0 && opt.From >= opt.End {
		return nil
	}
	if opt.BatchSize <= 0 {
		opt.BatchSize = DefaultBatchSize
	}
	if opt.End < 0 && opt.BatchWait <= 0 {
		opt.BatchWait = DefaultBatchWait
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: c.Brokers, Dialer: c.Security.Dialer(), Topic: topic, Partition: partition,
		MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 50 * time.Millisecond, QueueCapacity: 1000,
		// An offset retention has deleted must come back to the caller
		// (the consumer records it as lost), not be retried for ever.
		OffsetOutOfRangeError: true,
	})
	defer r.Close()
	start := opt.From
	if start < 0 {
		start = kafka.FirstOffset
	}
	if err := r.SetOffset(start); err != nil {
		return fmt.Errorf("seeking partition %d to %d: %w", partition, start, err)
	}
	rd := &readerState{r: r, opt: opt, topic: topic, partition: partition, next: opt.From}
	for {
		hwm, more, err := rd.fetch(ctx)
		if err != nil {
			return err
		}
		if len(rd.batch) > 0 {
			if err := fn(Batch{Records: rd.batch, HighWaterMark: hwm}); err != nil {
				return err
			}
		}
		if !more {
			return nil
		}
	}
}

// readerState is one Read's reader and the batch it fills.
type readerState struct {
	r         *kafka.Reader
	opt       ReadOptions
	topic     string
	partition int
	next      int64 // the offset after the last record taken; negative before the first
	batch     []record.Record
}

// fetch fills rd.batch afresh: it blocks for the first record, then takes
// more until the batch is full, BatchWait has passed since the first, or
// End is reached. It returns the high watermark of the last fetch and
// whether records may follow (false once End is reached).
func (rd *readerState) fetch(ctx context.Context) (hwm int64, more bool, err error) {
	clear(rd.batch)
	rd.batch = rd.batch[:0]
	m, err := rd.r.FetchMessage(ctx)
	if err != nil {
		return -1, false, rd.failed(err)
	}
	if !rd.take(m) {
		return -1, false, nil
	}
	hwm = m.HighWaterMark
	wait := ctx
	if rd.opt.BatchWait > 0 {
		var cancel context.CancelFunc
		wait, cancel = context.WithTimeout(ctx, rd.opt.BatchWait)
		defer cancel()
	}
	for len(rd.batch) < rd.opt.BatchSize && !rd.atEnd() {
		m, err := rd.r.FetchMessage(wait)
		if err != nil {
			if ctx.Err() != nil || rd.opt.BatchWait <= 0 {
				return -1, false, rd.failed(err)
			}
			break // the batch's time is up
		}
		if !rd.take(m) {
			return hwm, false, nil
		}
		hwm = m.HighWaterMark
	}
	return hwm, !rd.atEnd(), nil
}

// take appends m to the batch unless it lies at or past End.
func (rd *readerState) take(m kafka.Message) bool {
	if rd.opt.End >= 0 && m.Offset >= rd.opt.End {
		return false
	}
	rd.batch = append(rd.batch, readerRecord(m))
	rd.next = m.Offset + 1
	return true
}

func (rd *readerState) atEnd() bool { return rd.opt.End >= 0 && rd.next >= rd.opt.End }

func (rd *readerState) failed(err error) error {
	clear(rd.batch)
	rd.batch = rd.batch[:0]
	if rd.next < 0 {
		return fmt.Errorf("reading partition %d of %s: %w", rd.partition, rd.topic, err)
	}
	return fmt.Errorf("reading partition %d of %s at %d: %w", rd.partition, rd.topic, rd.next, err)
}

// readerRecord is m as the product's record, bytes and headers as the
// broker gave them.
func readerRecord(m kafka.Message) record.Record {
	var hs []record.Header
	if len(m.Headers) > 0 {
		hs = make([]record.Header, len(m.Headers))
		for i, h := range m.Headers {
			hs[i] = record.Header{Key: h.Key, Value: h.Value}
		}
	}
	return record.Record{Partition: m.Partition, Offset: m.Offset, Key: m.Key, Value: m.Value, Headers: hs, Time: m.Time}
}
