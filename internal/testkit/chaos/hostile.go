package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// Hostile record classes, written straight to usage.events (not through
// ingest). Every text field of an event rejects control characters and
// invalid UTF-8, and a record's value is the event, so:
//   - tombstone, empty, huge, json-nul and garbage are never valid events
//     and must end as dead letters;
//   - headers is a valid event (key = its tenant) under binary, NUL and
//     empty headers, which are no part of the event: it must be counted;
//   - key-not-utf8 and key-nul are valid events under a key that is not
//     their tenant: the contract says writers key by tenant but not what a
//     reader does with a wrong key, so either outcome is accepted (a dead
//     letter, or counted, and then it is in the ground truth).
const (
	HostileKeyNotUTF8 = "key-not-utf8"
	HostileKeyNUL     = "key-nul"
	HostileTombstone  = "tombstone"
	HostileEmpty      = "empty"
	HostileHuge       = "huge"
	HostileJSONNUL    = "json-nul"
	HostileGarbage    = "garbage"
	HostileHeaders    = "headers"
)

// HostileClasses lists every hostile class.
var HostileClasses = []string{HostileKeyNotUTF8, HostileKeyNUL, HostileTombstone, HostileEmpty, HostileHuge,
	HostileJSONNUL, HostileGarbage, HostileHeaders}

type expect int

const (
	expectDead expect = iota
	expectCount
	expectEither
)

// hostileRecord is one hostile record and where the broker put it.
type hostileRecord struct {
	class     string
	key       []byte // nil: null key
	value     []byte // nil: null value (tombstone)
	headers   []kafka.Header
	ev        *events.Event // the valid event the value holds, if any
	expect    expect
	partition int
	offset    int64 // -1 until acknowledged
	// attempts that failed without an answer may have been written too.
	unknown int
}

func weirdHeaders(rng *rand.Rand) []kafka.Header {
	pool := []kafka.Header{
		{Key: "bin\x00\xff", Value: []byte{0, 0xfe, '\n', 0x7f}},
		{Key: "", Value: []byte("empty key")},
		{Key: "nil-value", Value: nil},
		{Key: "empty-value", Value: []byte{}},
		{Key: "ctl\x01\x1b[31m", Value: []byte("\x1b[2J")},
		{Key: "dup", Value: []byte("1")},
		{Key: "dup", Value: []byte("2")},
		{Key: "big", Value: bytes.Repeat([]byte{0xff, 0}, 4<<10)},
		{Key: "error", Value: []byte("forged error header")},
		{Key: "source-offset", Value: []byte("-1")},
	}
	var hs []kafka.Header
	for range 1 + rng.IntN(4) {
		hs = append(hs, pool[rng.IntN(len(pool))])
	}
	return hs
}

func makeHostile(rng *rand.Rand, class string, tenants int, now time.Time) *hostileRecord {
	tenant := fmt.Sprint("t", rng.IntN(tenants))
	valid := func() *events.Event {
		return &events.Event{ID: "hostile-" + events.NewID(), Tenant: tenant, Metric: chaosMetrics[rng.IntN(len(chaosMetrics))],
			Value: rng.Int64N(1000), Time: now.Add(-time.Duration(rng.IntN(3600)) * time.Second)}
	}
	h := &hostileRecord{class: class, key: []byte(tenant), offset: -1}
	if rng.IntN(2) == 0 {
		h.headers = weirdHeaders(rng)
	}
	switch class {
	case HostileKeyNotUTF8:
		h.ev, h.expect = valid(), expectEither
		h.key = append([]byte(tenant), 0xff, 0xfe, 0xc3, 0x28)
	case HostileKeyNUL:
		h.ev, h.expect = valid(), expectEither
		h.key = []byte(tenant + "\x00\x00evil")
	case HostileTombstone:
		h.value = nil
		if rng.IntN(3) == 0 {
			h.key = nil
		}
	case HostileEmpty:
		h.value = []byte{}
	case HostileHuge: // ~1 MB: under the broker's message size even as a dead letter with its headers
		h.headers = nil
		chunk := []byte(`{"id":"` + tenant + "\x00\xff" + `",`)
		h.value = bytes.Repeat(chunk, (1_000_000+rng.IntN(20_000))/len(chunk))
	case HostileJSONNUL:
		e := valid()
		bad := []string{"a\u0000b", "x\u0001y\u001b[31m", "tab\there", "nl\nx", "del\u007f", "c1\u0085"}[rng.IntN(6)]
		field := rng.IntN(5)
		switch field {
		case 0:
			e.ID += bad
		case 1:
			e.Tenant += bad
		case 2:
			e.Metric += bad
		case 3:
			e.Source = bad
		default:
			e.Properties = map[string]string{"endpoint": bad}
		}
		h.value = e.AppendJSON(nil) // JSON escapes them: it decodes, and holds them
		if field >= 3 && strings.ContainsRune(bad, '\u0085') {
			// A C1 control character (NEL) in free text: the event
			// validator rejects C0 controls and DEL only, so this one may
			// be counted.
			h.ev, h.expect = e, expectEither
		}
	case HostileGarbage:
		b := make([]byte, 1+rng.IntN(300))
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		switch rng.IntN(3) {
		case 0:
			b = append([]byte(`{"id":`), b...)
		case 1:
			b = []byte(strings.ToValidUTF8(string(b), "?"))
		}
		h.value = b
	case HostileHeaders:
		h.ev, h.expect = valid(), expectCount
		h.headers = weirdHeaders(rng)
	}
	if h.ev != nil {
		h.value = h.ev.AppendJSON(nil)
	}
	return h
}

// hostileSender writes hostile records to usage.events with its own
// kafka-go transport, retrying through broker restarts.
type hostileSender struct {
	client     *kafka.Client
	transport  *kafka.Transport
	partitions int
	mu         sync.Mutex
	sent       []*hostileRecord
}

func newHostileSender(ctx context.Context, brokers string) (*hostileSender, error) {
	tr := &kafka.Transport{DialTimeout: 3 * time.Second, IdleTimeout: 10 * time.Second, MetadataTTL: time.Second,
		Dial: (&net.Dialer{Timeout: 3 * time.Second}).DialContext, ClientID: "chaos-hostile"}
	cl := &kafka.Client{Addr: kafka.TCP(brokers), Transport: tr, Timeout: 10 * time.Second}
	md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topics.UsageEvents}})
	if err != nil {
		return nil, fmt.Errorf("hostile sender: metadata of %s: %w", topics.UsageEvents, err)
	}
	n := 0
	for _, t := range md.Topics {
		if t.Name == topics.UsageEvents {
			n = len(t.Partitions)
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("hostile sender: %s has no partitions", topics.UsageEvents)
	}
	return &hostileSender{client: cl, transport: tr, partitions: n}, nil
}

func (s *hostileSender) close() { s.transport.CloseIdleConnections() }

// send writes h to a random partition, retrying for up to two minutes; a
// failed attempt may have been written anyway (counted in h.unknown).
func (s *hostileSender) send(ctx context.Context, rng *rand.Rand, h *hostileRecord) error {
	h.partition = rng.IntN(s.partitions)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		rec := kafka.Record{Key: kafka.NewBytes(h.key), Value: kafka.NewBytes(h.value), Headers: h.headers, Time: time.Now()}
		resp, err := s.client.Produce(ctx, &kafka.ProduceRequest{Topic: topics.UsageEvents, Partition: h.partition,
			RequiredAcks: kafka.RequireAll, Records: kafka.NewRecordReader(rec)})
		if err == nil && resp.Error == nil {
			h.offset = resp.BaseOffset
			s.mu.Lock()
			s.sent = append(s.sent, h)
			s.mu.Unlock()
			return nil
		}
		if err == nil {
			err = resp.Error
		}
		h.unknown++
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("writing a %s record to %s/%d: %w", h.class, topics.UsageEvents, h.partition, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *hostileSender) records() []*hostileRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sent)
}

// deadLetter is a row of usage_dlq.
type deadLetter struct {
	id                int64
	partition         int
	offset            int64
	key, payload      []byte
	hkeys, hvals      [][]byte
	class, reason, st string
}

// holds reports whether d holds h's key, value and headers byte for byte.
// An empty value and a null one (a tombstone) compare equal here: kafka-go's
// reader returns nil for both (a zero-length field reads as nil), so no
// consumer built on it can tell them apart; nullMismatch reports it.
func (d deadLetter) holds(h *hostileRecord) bool {
	if !bytes.Equal(d.key, h.key) || !bytes.Equal(d.payload, h.value) || len(d.hkeys) != len(h.headers) || len(d.hvals) != len(h.headers) {
		return false
	}
	for i, hd := range h.headers {
		if string(d.hkeys[i]) != hd.Key || !bytes.Equal(d.hvals[i], hd.Value) {
			return false
		}
	}
	return true
}

// nullMismatch reports whether d lost the difference between an empty and
// a null key or value of h.
func (d deadLetter) nullMismatch(h *hostileRecord) bool {
	return (d.key == nil) != (h.key == nil) || (d.payload == nil) != (h.value == nil)
}

// auditHostile accounts for every hostile record once usage.events is
// consumed: a dead letter at its offset holding its bytes, or (a valid
// event) counted in the ledger, which then adds it to the ground truth.
// Dead letters at offsets no acknowledged record holds must be copies of
// attempts that failed without an answer. It returns the ids of the
// hostile dead letters, for on-call's discard.
func auditHostile(ctx context.Context, pool *pgxpool.Pool, hs []*hostileRecord, truth map[string]int64, rep *Report) ([]int64, error) {
	rows, err := pool.Query(ctx, `SELECT id, source_partition, source_offset, msg_key, payload, header_keys, header_values,
		error_class, error, status FROM usage_dlq WHERE source_topic = $1 ORDER BY id`, topics.UsageEvents)
	if err != nil {
		return nil, fmt.Errorf("reading usage_dlq: %w", err)
	}
	var dls []deadLetter
	for rows.Next() {
		var d deadLetter
		if err := rows.Scan(&d.id, &d.partition, &d.offset, &d.key, &d.payload, &d.hkeys, &d.hvals, &d.class, &d.reason, &d.st); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading usage_dlq: %w", err)
		}
		dls = append(dls, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading usage_dlq: %w", err)
	}
	rep.UsageDeadLetters = len(dls)
	type at struct {
		p int
		o int64
	}
	byAt := map[at]*hostileRecord{}
	for _, h := range hs {
		byAt[at{h.partition, h.offset}] = h
	}
	deadFor := map[*hostileRecord]bool{}
	var ids []int64
	var problems []string
	for _, d := range dls {
		if h, ok := byAt[at{d.partition, d.offset}]; ok {
			if !d.holds(h) {
				problems = append(problems, fmt.Sprintf("dead letter %d (%s at %d/%d) does not hold the record's bytes", d.id, h.class, d.partition, d.offset))
				continue
			}
			if d.nullMismatch(h) {
				rep.HostileEmptyAsNull++
			}
			deadFor[h] = true
			ids = append(ids, d.id)
			continue
		}
		copyOf := slices.IndexFunc(hs, func(h *hostileRecord) bool { return h.unknown > 0 && h.partition == d.partition && d.holds(h) })
		if copyOf >= 0 {
			rep.HostileCopies++
			ids = append(ids, d.id)
			continue
		}
		rep.UnexpectedDeadLetters++
		if len(problems) < 5 {
			problems = append(problems, fmt.Sprintf("dead letter %d at %d/%d is no hostile record: %s: %s", d.id, d.partition, d.offset, d.class, d.reason))
		}
	}
	for _, h := range hs {
		counted := false
		if h.ev != nil {
			var n int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM ledger_events WHERE tenant = $1 AND event_id = $2`, h.ev.Tenant, h.ev.ID).Scan(&n); err != nil {
				return nil, fmt.Errorf("reading the ledger: %w", err)
			}
			counted = n == 1
		}
		switch {
		case deadFor[h] && counted:
			problems = append(problems, fmt.Sprintf("%s record at %d/%d is both a dead letter and counted", h.class, h.partition, h.offset))
		case deadFor[h] && h.expect == expectCount:
			problems = append(problems, fmt.Sprintf("valid %s record at %d/%d was dead-lettered", h.class, h.partition, h.offset))
		case deadFor[h]:
			rep.HostileDeadLettered++
		case counted && h.expect != expectDead:
			rep.HostileCounted++
			for _, g := range windows.All {
				truth[fmt.Sprintf("%s/%s/%s/%d", h.ev.Tenant, h.ev.Metric, g, g.Start(h.ev.Time).Unix())] += h.ev.Value
			}
		default:
			rep.HostileMissing++
			problems = append(problems, fmt.Sprintf("%s record at %d/%d is neither a dead letter nor counted", h.class, h.partition, h.offset))
		}
	}
	if len(problems) > 0 {
		return ids, errors.New("hostile records: " + strings.Join(problems, "; "))
	}
	return ids, nil
}
