package ingest_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
	"github.com/usagemeter/metering/internal/topics"
)

// lineageRow is one row of a push's lineage stream.
type lineageRow struct {
	Kind       string
	ID         string
	Value      int64
	Partition  int32
	Offset     int64
	Complete   bool
	Unreadable int64
}

// TestDefinedMeterLineage: a grouped sum meter with a filter and two
// groups, two pushes per group with a batch counted while a push was
// planned: each push lists exactly the matching events of its group
// counted since the previous one, read from the log, and they sum to its
// delta; a count meter's events count to its delta; an event's lineage
// names the defined meters' groups and pushes; a record retention deleted
// makes the push's lineage incomplete on both routes.
func TestDefinedMeterLineage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.db.LedgerEventsWritable(t)
	e.db.Exec(t, `INSERT INTO meters (name, metric, aggregation, group_by, filter, version) VALUES
		('tokens_by_model', 'tokens', 'sum', '{model}', '{"region":"eu"}', 1),
		('calls_by_model', 'tokens', 'count', '{model}', '{}', 1),
		('peak_by_model', 'tokens', 'max', '{model}', '{}', 1)`)
	type ev struct {
		id, model, region string
		value             int64
	}
	evs := []ev{
		{"e1", "o1", "eu", 3}, {"e2", "o2", "eu", 5}, {"e3", "o1", "us", 100},
		{"e4", "o1", "eu", 7}, {"e5", "o2", "eu", 11}, {"e6", "o1", "eu", 2},
		{"e7", "o2", "eu", 13}, {"e8", "o1", "eu", 17},
	}
	at := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	recs := make([]record.Record, len(evs))
	for i, x := range evs {
		b, err := events.Event{ID: x.id, Tenant: "acme", Metric: "tokens", Value: x.value, Time: at.Add(time.Duration(i) * time.Minute),
			Properties: map[string]string{"model": x.model, "region": x.region}}.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		recs[i] = record.Record{Key: []byte("acme/" + x.id), Value: b}
	}
	e.kc.Write(t, topics.UsageEvents, recs...)
	where := map[string][2]int64{}
	for _, m := range kafkatest.ReadAll(t, e.kc.Brokers(), topics.UsageEvents) {
		var got events.Event
		if err := got.UnmarshalJSON(m.Value); err != nil {
			t.Fatal(err)
		}
		where[got.ID] = [2]int64{int64(m.Partition), m.Offset}
	}
	count := func(tx interface {
		Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
	}, ids ...string) {
		t.Helper()
		for _, id := range ids {
			i := int(id[1] - '1')
			w := where[id]
			if _, err := tx.Exec(context.Background(), `INSERT INTO ledger_events (tenant, event_id, payload_hash, metric, value, event_time, event_day, src_partition, src_offset)
				VALUES ('acme', $1, 0, 'tokens', $2, $3, $4, $5, $6)`, id, evs[i].value, at.Add(time.Duration(i)*time.Minute), at.Format(time.DateOnly), w[0], w[1]); err != nil {
				t.Fatal(err)
			}
		}
	}
	db := e.db.Pool
	push := func(meter, group, ident string, cumulative, delta int64) {
		t.Helper()
		e.db.Exec(t, `INSERT INTO billing_pushes (tenant, metric, period_start, billed_period_start, stripe_customer_id, event_name, cumulative_total, delta,
				identifier, event_timestamp, group_key, metered_snapshot) VALUES
			('acme', $1, '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', 'cus_a', $1, $2, $3, $4, now(), $5, pg_current_snapshot())`, meter, cumulative, delta, ident, group)
	}
	count(db, "e1", "e2", "e3")
	push("peak_by_model", `["o1"]`, "peak_first", 100, 100)
	push("tokens_by_model", `["o1"]`, "o1_first", 3, 3)
	push("tokens_by_model", `["o2"]`, "o2_first", 5, 5)
	// A batch (e4, e5) is being counted while o1's second push is planned:
	// its snapshot does not see it, the third pushes carry it.
	tx, err := e.db.Pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // committed below
	count(tx, "e4", "e5")
	count(db, "e6")
	push("tokens_by_model", `["o1"]`, "o1_second", 5, 2)
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	count(db, "e7")
	push("tokens_by_model", `["o1"]`, "o1_third", 12, 7)
	push("tokens_by_model", `["o2"]`, "o2_third", 29, 24)
	push("calls_by_model", `["o1"]`, "calls_o1", 4, 4)
	push("peak_by_model", `["o1"]`, "peak_second", 101, 1)

	rows := func(ident string) []lineageRow {
		t.Helper()
		code, body := e.lineageGet(t, "/v1/lineage/pushes/"+ident+"/events")
		if code != 200 {
			t.Fatalf("%s: %d %s", ident, code, body)
		}
		var out []lineageRow
		for _, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
			var r lineageRow
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("%s: %v in %q", ident, err, line)
			}
			out = append(out, r)
		}
		if len(out) == 0 || out[len(out)-1].Kind != "end" {
			t.Fatalf("%s: %s, want an end row", ident, body)
		}
		return out
	}
	carried := map[string]string{}
	for _, tt := range []struct {
		ident string
		delta int64
		ids   string
	}{
		{"o1_first", 3, "e1"}, {"o2_first", 5, "e2"},
		{"o1_second", 2, "e6"},
		{"o1_third", 7, "e4"}, {"o2_third", 24, "e5,e7"},
	} {
		got := rows(tt.ident)
		var ids []string
		var sum int64
		for _, r := range got[:len(got)-1] {
			if r.Kind != "event" {
				t.Fatalf("%s: row %+v", tt.ident, r)
			}
			if w := where[r.ID]; w != [2]int64{int64(r.Partition), r.Offset} {
				t.Errorf("%s: %s at %d/%d, written at %v", tt.ident, r.ID, r.Partition, r.Offset, w)
			}
			if prev, dup := carried[r.ID]; dup {
				t.Errorf("%s carried by %s and %s", r.ID, prev, tt.ident)
			}
			carried[r.ID] = tt.ident
			ids = append(ids, r.ID)
			sum += r.Value
		}
		end := got[len(got)-1]
		if sum != tt.delta || strings.Join(ids, ",") != sortedIDs(tt.ids, where) || !end.Complete || end.Unreadable != 0 {
			t.Errorf("%s: events %v summing to %d, end %+v; want %s summing to %d, complete", tt.ident, ids, sum, end, tt.ids, tt.delta)
		}
	}
	// Every counted event the meter takes (region eu) is in exactly one push.
	for _, id := range []string{"e1", "e2", "e4", "e5", "e6", "e7"} {
		if carried[id] == "" {
			t.Errorf("%s is in no push", id)
		}
	}
	if carried["e3"] != "" {
		t.Errorf("e3 (region us) is in %s", carried["e3"])
	}
	// A count meter: every o1 event up to the push, whatever its region.
	if got := rows("calls_o1"); len(got) != 5 {
		t.Errorf("calls_o1: %+v, want e1, e3, e4, e6 and the end", got)
	}
	// A max meter's push lists every event of its group in the period up
	// to it, the previous push's too, and says its delta is not a sum.
	if got := rows("peak_second"); len(got) != 5 {
		t.Errorf("peak_second: %+v, want e1, e3, e4, e6 and the end", got)
	}
	if code, body := e.lineageGet(t, "/v1/lineage/pushes/peak_second"); code != 200 || !strings.Contains(body, `"delta_is":"not_a_sum:`) {
		t.Errorf("max summary: %d %s", code, body)
	}
	code, body := e.lineageGet(t, "/v1/lineage/pushes/o2_third")
	if code != 200 || !strings.Contains(body, `"complete":true`) || !strings.Contains(body, `"delta_is":"sum:`) ||
		!strings.Contains(body, `"definition_version":1`) {
		t.Errorf("summary: %d %s", code, body)
	}
	code, body = e.lineageGet(t, "/v1/lineage/events/e5?tenant=acme")
	if code != 200 || !strings.Contains(body, `"meter":"tokens_by_model","definition_version":1,"group":"[\"o2\"]"`) ||
		!strings.Contains(body, `"push":{"identifier":"o2_third"`) || !strings.Contains(body, `"meter":"calls_by_model"`) ||
		!strings.Contains(body, `"meters_complete":true`) {
		t.Errorf("event lineage: %d %s", code, body)
	}

	// Retention deletes e8 and the records before it in its partition: the
	// push that carried e8 is incomplete.
	count(db, "e8")
	push("tokens_by_model", `["o1"]`, "o1_fourth", 29, 17)
	w8 := where["e8"]
	deleteRecordsBelow(t, e.kc.Addr(), topics.UsageEvents, int32(w8[0]), w8[1]+1)
	got := rows("o1_fourth")
	if end := got[len(got)-1]; end.Complete || end.Unreadable != 1 || got[0].Kind != "unreadable" || got[0].ID != "e8" {
		t.Errorf("after retention: %+v, want e8 unreadable and an incomplete end", got)
	}
	code, body = e.lineageGet(t, "/v1/lineage/pushes/o1_fourth")
	if code != 200 || !strings.Contains(body, `"complete":false`) || !strings.Contains(body, "retention deleted") {
		t.Errorf("summary after retention: %d %s", code, body)
	}
	code, body = e.lineageGet(t, "/v1/lineage/events/e8?tenant=acme")
	if code != 200 || !strings.Contains(body, `"meters_complete":false`) || !strings.Contains(body, "retention") {
		t.Errorf("event lineage after retention: %d %s", code, body)
	}
}

// sortedIDs orders the comma-separated ids as the stream does: by
// partition, then offset.
func sortedIDs(ids string, where map[string][2]int64) string {
	if ids == "" {
		return ""
	}
	list := strings.Split(ids, ",")
	for i := range list {
		for j := i + 1; j < len(list); j++ {
			a, b := where[list[i]], where[list[j]]
			if b[0] < a[0] || b[0] == a[0] && b[1] < a[1] {
				list[i], list[j] = list[j], list[i]
			}
		}
	}
	return strings.Join(list, ",")
}

// lineageGet gets path with the admin key.
func (e *env) lineageGet(t *testing.T, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// deleteRecordsBelow has the broker at addr delete partition's records
// below offset, as retention would.
func deleteRecordsBelow(t *testing.T, addr, topic string, partition int32, offset int64) {
	t.Helper()
	req := kmsg.NewPtrDeleteRecordsRequest()
	req.TimeoutMillis = 10000
	req.Topics = []kmsg.DeleteRecordsRequestTopic{{Topic: topic, Partitions: []kmsg.DeleteRecordsRequestTopicPartition{{Partition: partition, Offset: offset}}}}
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	// A version 0 request header: key, version, correlation id, client id.
	msg := binary.BigEndian.AppendUint16(nil, uint16(req.Key()))
	msg = binary.BigEndian.AppendUint16(msg, 0)
	msg = binary.BigEndian.AppendUint32(msg, 1)
	msg = binary.BigEndian.AppendUint16(msg, 4)
	msg = append(msg, "test"...)
	msg = req.AppendTo(msg)
	if _, err := conn.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(msg))), msg...)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	var size uint32
	if err := binary.Read(r, binary.BigEndian, &size); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	resp := req.ResponseKind().(*kmsg.DeleteRecordsResponse)
	if err := resp.ReadFrom(body[4:]); err != nil {
		t.Fatal(err)
	}
	for _, tp := range resp.Topics {
		for _, p := range tp.Partitions {
			if p.ErrorCode != 0 {
				t.Fatal(fmt.Errorf("deleting records of %s/%d: error code %d", topic, p.Partition, p.ErrorCode))
			}
		}
	}
}
