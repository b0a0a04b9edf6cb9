package aggregator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/aggregator"
	records "github.com/usagemeter/metering/internal/record"
	"github.com/usagemeter/metering/internal/recordsign"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/topics"
)

// TestDeadLetteredAdjustmentReplaysAsAnAdjustment: an adjustment that
// cannot be applied yet (its meter has no usage and is not defined)
// becomes a dead letter that keeps its kind: the dead-letter topic's
// message carries kind: adjustment, `dlq list` shows it as an adjustment
// beside a poison event, and once the cause is fixed `dlq replay`
// publishes it again as an adjustment. Sent twice (two dead letters of
// one id) and replayed one after the other, it is applied once.
func TestDeadLetteredAdjustmentReplaysAsAnAdjustment(t *testing.T) {
	s := newStack(t)
	cfg := s.config()
	s.start(cfg)
	ctx := context.Background()
	now := time.Now().UTC()
	month := windowsMonth(now)
	adj := rollup.Adjustment{ID: "0b7c6f3a-2d1e-4f5a-8b9c-1d2e3f4a5b6c", Tenant: "acme", Meter: "exports",
		Group: map[string]string{}, Period: month.Format("2006-01"), Amount: 30, Reason: "missed export", Reference: "T-7"}
	keys, err := recordsign.ParseKeys(testSigningKeys)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := adj.SignedRecord(keys, now)
	if err != nil {
		t.Fatal(err)
	}
	// Signed as ingest would sign it, so that it fails where it should: decoding.
	undecodable := rollup.Record{Key: []byte("acme"), Value: []byte(`{"id":"not a uuid"}`),
		Headers: []records.Header{{Key: rollup.HeaderKind, Value: []byte(rollup.KindAdjustment)}}}
	if err := keys.Sign(&undecodable, rollup.KindAdjustment, now); err != nil {
		t.Fatal(err)
	}
	// The same adjustment twice (a resend), one that cannot be decoded,
	// and a poison event.
	s.kc.Write(t, topics.UsageEvents, rec, rec, undecodable)
	s.raw("this is not an event", "acme")
	s.waitConsumed("metering-aggregator")

	dlqMsgs := s.waitTopic(topics.UsageEventsDLQ, 4)
	kinds := map[string]int{}
	for _, m := range dlqMsgs {
		kinds[header(m, "kind")]++
	}
	if kinds["adjustment"] != 3 || kinds[""] != 1 {
		t.Errorf("kind headers on %s: %v, want 3 adjustments and 1 without", topics.UsageEventsDLQ, kinds)
	}

	list := func(status string) []rollup.DeadLetter {
		t.Helper()
		var out bytes.Buffer
		if err := aggregator.DLQCommand(ctx, cfg, slog.New(slog.DiscardHandler), "list", []string{"--status", status, "--format", "json"}, &out); err != nil {
			t.Fatal(err)
		}
		var dls []rollup.DeadLetter
		if err := json.Unmarshal(out.Bytes(), &dls); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
		return dls
	}
	pending := list("pending")
	var adjIDs []string
	var undecodableID string
	for _, d := range pending {
		switch {
		case d.Kind == "adjustment" && d.ErrorClass == "invalid" && d.Payload == string(rec.Value):
			adjIDs = append(adjIDs, strconv.FormatInt(d.ID, 10))
			if !strings.Contains(d.Error, "no usage of it") {
				t.Errorf("the adjustment's dead letter says %q", d.Error)
			}
		case d.Kind == "adjustment" && d.ErrorClass == "undecodable":
			undecodableID = strconv.FormatInt(d.ID, 10)
		case d.Kind == "event" && d.ErrorClass == "undecodable":
		default:
			t.Errorf("unexpected dead letter %+v", d)
		}
	}
	if len(pending) != 4 || len(adjIDs) != 2 || undecodableID == "" {
		t.Fatalf("pending dead letters %+v: want 2 adjustments, 1 undecodable adjustment and 1 event", pending)
	}
	var table bytes.Buffer
	if err := aggregator.DLQCommand(ctx, cfg, slog.New(slog.DiscardHandler), "list", nil, &table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "KIND") || strings.Count(table.String(), "  adjustment  ") != 3 || strings.Count(table.String(), "  event  ") != 1 {
		t.Errorf("dlq list table:\n%s", table.String())
	}

	// The cause is fixed: acme now has usage of exports.
	if err := s.producer.Emit(ctx, events.Event{ID: "x-1", Tenant: "acme", Metric: "exports", Value: 10, Time: now.Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	s.waitConsumed("metering-aggregator")
	replay := func(id string) {
		t.Helper()
		var out bytes.Buffer
		if err := aggregator.DLQCommand(ctx, cfg, slog.New(slog.DiscardHandler), "replay", []string{id, "--actor", "finance", "--note", "meter fixed"}, &out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "replayed 1 dead letters") {
			t.Errorf("replay said %q", out.String())
		}
		// The replay reaches usage.events through the outbox: wait until
		// it is published, then until the aggregator has read it.
		deadline := time.Now().Add(60 * time.Second)
		for {
			var waiting int
			if err := s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE topic = $1 AND published_at IS NULL`, topics.UsageEvents).Scan(&waiting); err != nil {
				t.Fatal(err)
			}
			if waiting == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the replay is still in the outbox after 60 s")
			}
			time.Sleep(50 * time.Millisecond)
		}
		s.waitConsumed("metering-aggregator")
	}
	counts := func() (window string, applied, recorded int) {
		t.Helper()
		window = s.value("acme", "exports", "month", month)
		if err := s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM usage_adjustments WHERE adjustment_id = $1`, adj.ID).Scan(&applied); err != nil {
			t.Fatal(err)
		}
		if err := s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE topic = $1 AND convert_from(msg_value, 'UTF8') LIKE '%adjustment.recorded%'`,
			topics.BillingEvents).Scan(&recorded); err != nil {
			t.Fatal(err)
		}
		return window, applied, recorded
	}
	replay(adjIDs[0])
	if w, applied, recorded := counts(); w != "40" || applied != 1 || recorded != 1 {
		t.Fatalf("after one replay: month window %s, %d adjustments applied, %d adjustment.recorded; want 40, 1, 1", w, applied, recorded)
	}
	replay(adjIDs[1])
	if w, applied, recorded := counts(); w != "40" || applied != 1 || recorded != 1 {
		t.Errorf("after the second replay: month window %s, %d adjustments applied, %d adjustment.recorded; want 40, 1, 1", w, applied, recorded)
	}
	// Neither replay came back as a dead letter, and a replayed one is
	// not replayed again.
	if p := list("pending"); len(p) != 2 {
		t.Errorf("pending after the replays: %+v, want the undecodable adjustment and the poison event", p)
	}
	var out bytes.Buffer
	if err := aggregator.DLQCommand(ctx, cfg, slog.New(slog.DiscardHandler), "replay", []string{adjIDs[0]}, &out); err == nil {
		t.Errorf("replaying a replayed dead letter succeeded: %s", out.String())
	}
	replayed := list("replayed")
	if len(replayed) != 2 || replayed[0].Kind != "adjustment" || replayed[1].Kind != "adjustment" {
		t.Errorf("replayed dead letters %+v, want the two adjustments", replayed)
	}
	// What went back to usage.events is an adjustment record.
	var asAdjustment int
	for _, m := range s.waitTopic(topics.UsageEvents, 6) {
		if header(m, "dlq-replay-of") != "" && header(m, "kind") == "adjustment" && string(m.Value) == string(rec.Value) {
			asAdjustment++
		}
	}
	if asAdjustment != 2 {
		t.Errorf("%d replays on %s carry kind: adjustment, want 2", asAdjustment, topics.UsageEvents)
	}
}
