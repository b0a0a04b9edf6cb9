package deadletters

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/storage"
)

// UsageLetters are records of a source topic that could not be counted,
// as parallel columns (row i is element i of each). Tenants, Errors and
// Classes must be sanitised text (valid UTF-8 without NUL); Keys,
// Payloads and Headers are kept byte for byte, a nil Payload (a
// tombstone) as NULL.
type UsageLetters struct {
	Tenants, Errors, Classes []string
	Partitions               []int32
	Offsets                  []int64
	Keys, Payloads           [][]byte
	Headers                  [][]record.Header
}

// RecordUsage records the rows of l, read from topic, as pending usage
// dead letters failed at failedAt, in one statement. A record of topic
// whose (partition, offset) is recorded already is skipped, so a retried
// batch records it once; no bytes of a key, payload or header can fail
// the insert.
func RecordUsage(ctx context.Context, q storage.Executor, topic string, l *UsageLetters, failedAt time.Time) error {
	n := len(l.Tenants)
	hkeys, hvals := make([]string, n), make([]string, n)
	for i, hs := range l.Headers {
		hkeys[i], hvals[i] = recordHeaderArray(hs, func(h record.Header) []byte { return []byte(h.Key) }),
			recordHeaderArray(hs, func(h record.Header) []byte { return h.Value })
	}
	// Headers travel as text literals of bytea arrays (all hex), since a
	// batch's headers are arrays of arrays of unequal lengths.
	if _, err := q.Exec(ctx, `INSERT INTO usage_dlq (tenant, error, error_class, source_topic, source_partition, source_offset,
			msg_key, payload, header_keys, header_values, failed_at)
		SELECT t, e, c, $10, p, o, k, v, hk::bytea[], hv::bytea[], $11
		FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bytea[], $7::bytea[], $8::text[], $9::text[])
			AS b(t, e, c, p, o, k, v, hk, hv)
		ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING`,
		l.Tenants, l.Errors, l.Classes, l.Partitions, l.Offsets, l.Keys, l.Payloads, hkeys, hvals, topic, failedAt); err != nil {
		return fmt.Errorf("recording dead letters: %w", err)
	}
	return nil
}

// recordHeaderArray writes one field of each header as a Postgres bytea[]
// literal of hex strings, such as {"\\x6b6579"}: plain ASCII whatever the
// bytes.
func recordHeaderArray(hs []record.Header, field func(record.Header) []byte) string {
	b := []byte{'{'}
	for i, h := range hs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `"\\x`...)
		b = hex.AppendEncode(b, field(h))
		b = append(b, '"')
	}
	return string(append(b, '}'))
}
