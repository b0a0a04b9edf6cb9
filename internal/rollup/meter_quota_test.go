package rollup_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/quota"
	"github.com/usagemeter/metering/internal/rollup"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/topics"
	"github.com/usagemeter/metering/internal/windows"
)

// TestMeterQuotas takes one tenant's tokens through quotas on the implicit
// meter, on the groups of a meter matching a filter (a hard quota with a
// burst), on each group of that meter (per day), and on the distinct users
// of the groups of a unique_count meter matching a filter: each batch
// records exactly the thresholds it crossed, once, with the exact value,
// the meter and the group, under ids that say so.
func TestMeterQuotas(t *testing.T) {
	a, db := newAgg(t)
	ctx := context.Background()
	putMeters(t, db,
		meter.Definition{Name: "tokens_by_model", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}},
		meter.Definition{Name: "users_by_model", Metric: "tokens", Aggregation: meter.UniqueCount, GroupBy: []string{"model", "project"}, Property: "user"},
	)
	st := accounts.New(db.Pool)
	if _, err := st.PutPlan(ctx, accounts.Plan{Name: "metered", Quotas: []accounts.Quota{
		{Metric: "tokens", Limit: ptr(200), Period: "month", StripeEventName: "tokens"},
		{Metric: "tokens", Meter: "tokens_by_model", Filter: map[string]string{"model": "gpt-4"}, Limit: ptr(100), Period: "month", Hard: true, BurstPercent: 10, StripeEventName: "tokens"},
		{Metric: "tokens", Meter: "tokens_by_model", PerGroup: true, Limit: ptr(50), Period: "day", StripeEventName: "tokens"},
		{Metric: "tokens", Meter: "users_by_model", Filter: map[string]string{"model": "gpt-4"}, Limit: ptr(5), Period: "month", Hard: true, StripeEventName: "tokens"},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "metered"}); err != nil {
		t.Fatal(err)
	}
	n := 0
	tok := func(at time.Time, value int64, props ...string) events.Event {
		n++
		e := ev(fmt.Sprint("e", n), "acme", "tokens", value, at)
		e.Properties = map[string]string{}
		for i := 0; i < len(props); i += 2 {
			e.Properties[props[i]] = props[i+1]
		}
		return e
	}
	tomorrow := now.Add(24 * time.Hour)
	steps := []struct {
		at     time.Time
		events []events.Event
		want   []string // meter, group key, group, threshold, value
	}{
		{now, []events.Event{tok(now, 40, "model", "gpt-4", "user", "u1", "project", "p1"), tok(now, 30, "model", "gpt-3", "user", "u1", "project", "p1")},
			[]string{`tokens_by_model ["gpt-4"] {"model":"gpt-4"} warning 40`}},
		{now, []events.Event{tok(now, 40, "model", "gpt-4", "user", "u2", "project", "p2")},
			[]string{`tokens_by_model ["gpt-4"] {"model":"gpt-4"} exceeded 80`, `tokens_by_model {"model":"gpt-4"} {"model":"gpt-4"} warning 80`}},
		{now, []events.Event{tok(now, 30, "model", "gpt-3", "user", "u3", "project", "p1"), tok(now, 45, "user", "u4")},
			[]string{`tokens  {} warning 185`, `tokens_by_model ["gpt-3"] {"model":"gpt-3"} warning 60`,
				`tokens_by_model ["gpt-3"] {"model":"gpt-3"} exceeded 60`, `tokens_by_model [null] {"model":null} warning 45`}},
		{now, []events.Event{tok(now, 30, "model", "gpt-4", "user", "u3", "project", "p3"), tok(now, 1, "model", "gpt-4", "user", "u4", "project", "p1"),
			tok(now, 0, "model", "gpt-4", "user", "u5", "project", "p2")},
			[]string{`tokens  {} exceeded 216`, `tokens_by_model {"model":"gpt-4"} {"model":"gpt-4"} exceeded 111`,
				`tokens_by_model {"model":"gpt-4"} {"model":"gpt-4"} blocked 111`, // 111 > 100 × 1.1
				`users_by_model {"model":"gpt-4"} {"model":"gpt-4"} warning 5`, `users_by_model {"model":"gpt-4"} {"model":"gpt-4"} exceeded 5`}},
		// u1 again, in another gpt-4 group; u6 in a gpt-3 group: still 5
		// distinct gpt-4 users, nothing new.
		{now, []events.Event{tok(now, 1, "model", "gpt-4", "user", "u1", "project", "p9"), tok(now, 5, "model", "gpt-3", "user", "u6", "project", "p1")}, nil},
		{now, []events.Event{tok(now, 0, "model", "gpt-4", "user", "u6", "project", "p1")},
			[]string{`users_by_model {"model":"gpt-4"} {"model":"gpt-4"} blocked 6`}},
		// A new day: per_group quotas start again, month quotas go on.
		{tomorrow, []events.Event{tok(tomorrow, 45, "model", "gpt-4", "user", "u1", "project", "p1")},
			[]string{`tokens_by_model ["gpt-4"] {"model":"gpt-4"} warning 45`}},
	}
	offset := int64(0)
	var all []quota.Breach
	for i, s := range steps {
		at := s.at
		agg := a
		if !at.Equal(now) {
			agg = rollup.New(db.Pool, rollup.Config{Group: "test", Topic: "usage.events", Now: func() time.Time { return at }, Logger: slog.New(slog.DiscardHandler)})
		}
		items := make([]any, len(s.events))
		for j, e := range s.events {
			items[j] = e
		}
		recs := batch(offset, items...)
		for j := range recs {
			recs[j].Time = at
		}
		res, err := agg.Apply(ctx, 0, offset-boolToInt(offset == 0), recs)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		offset = res.NextOffset
		var got []string
		for _, b := range res.Breaches {
			got = append(got, fmt.Sprintf("%s %s %s %s %s", b.Meter, b.GroupKey, b.Group, b.Threshold, b.Value))
			var id string
			if b.Meter == b.Metric {
				id = quota.BreachID(b.Tenant, b.Metric, b.PeriodStart, b.Threshold)
			} else {
				id = quota.MeterBreachID(b.Tenant, b.Meter, b.GroupKey, b.PeriodStart, b.Threshold)
			}
			if b.BreachID != id {
				t.Errorf("step %d: breach %s has id %s, want %s", i, got[len(got)-1], b.BreachID, id)
			}
			period := windows.Month
			if b.GroupKey != "" && b.GroupKey[0] == '[' {
				period = windows.Day
			}
			if start, end := period.Span(at); !b.PeriodStart.Equal(start) || !b.PeriodEnd.Equal(end) {
				t.Errorf("step %d: breach %s in period [%v, %v), want [%v, %v)", i, got[len(got)-1], b.PeriodStart, b.PeriodEnd, start, end)
			}
		}
		if !slices.Equal(got, s.want) {
			t.Fatalf("step %d: breaches\n%q\nwant\n%q", i, got, s.want)
		}
		all = append(all, res.Breaches...)
	}

	// The messages for quota.breaches carry the meter and the group.
	var queued []string
	for _, v := range db.Outbox(t, topics.QuotaBreaches) {
		var m struct {
			ID    string          `json:"breach_id"`
			Meter string          `json:"meter"`
			Group json.RawMessage `json:"group"`
		}
		if err := json.Unmarshal(v, &m); err != nil {
			t.Fatal(err)
		}
		queued = append(queued, fmt.Sprintf("%s %s %s", m.ID, m.Meter, m.Group))
	}
	var want []string
	for _, b := range all {
		want = append(want, fmt.Sprintf("%s %s %s", b.BreachID, b.Meter, b.Group))
	}
	if !slices.Equal(queued, want) {
		t.Fatalf("outbox\n%q\nwant\n%q", queued, want)
	}

	// The breach history reads them back, meter and group included.
	history, err := usagedata.NewReader(db.Pool).Breaches(ctx, "acme", 100)
	if err != nil {
		t.Fatal(err)
	}
	var read []string
	for _, b := range history {
		read = append(read, fmt.Sprintf("%s %s %s %s", b.BreachID, b.Meter, b.GroupKey, b.Group))
	}
	want = want[:0]
	for _, b := range all {
		want = append(want, fmt.Sprintf("%s %s %s %s", b.BreachID, b.Meter, b.GroupKey, b.Group))
	}
	slices.Sort(read)
	slices.Sort(want)
	if !slices.Equal(read, want) {
		t.Fatalf("history\n%q\nwant\n%q", read, want)
	}
}

// BenchmarkApplyMeterQuotas applies batches of 500 events, each of its own
// model (500 groups a batch, new ones each batch), to a tenant whose plan
// has no quota on the meter, a per_group quota on it, or a filter quota on
// one model: what evaluating quotas on groups adds to a batch.
func BenchmarkApplyMeterQuotas(b *testing.B) {
	for _, tc := range []struct {
		name   string
		quotas []accounts.Quota
	}{
		{"no meter quota", nil},
		{"per_group", []accounts.Quota{{Metric: "tokens", Meter: "tokens_by_model", PerGroup: true, Limit: ptr(1 << 40), Period: "month", StripeEventName: "tokens"}}},
		{"filter", []accounts.Quota{{Metric: "tokens", Meter: "tokens_by_model", Filter: map[string]string{"model": "m-0-7"}, Limit: ptr(1 << 40), Period: "month", StripeEventName: "tokens"}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			a, db := newAgg(b)
			ctx := context.Background()
			def := meter.Definition{Name: "tokens_by_model", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model"}}
			if _, _, err := accounts.PutMeter(ctx, db.Pool, accounts.Meter{Name: def.Name, Metric: def.Metric, Aggregation: string(def.Aggregation), GroupBy: def.GroupBy}); err != nil {
				b.Fatal(err)
			}
			st := accounts.New(db.Pool)
			quotas := append([]accounts.Quota{{Metric: "tokens", Limit: ptr(1 << 40), Period: "month", StripeEventName: "tokens"}}, tc.quotas...)
			if _, err := st.PutPlan(ctx, accounts.Plan{Name: "p", Quotas: quotas}); err != nil {
				b.Fatal(err)
			}
			if _, err := st.PutTenant(ctx, accounts.Tenant{Tenant: "acme", Plan: "p"}); err != nil {
				b.Fatal(err)
			}
			offset := int64(0)
			n := 0
			for b.Loop() {
				items := make([]any, 500)
				for i := range items {
					e := ev(fmt.Sprint("e", n, "-", i), "acme", "tokens", 1, now)
					e.Properties = map[string]string{"model": fmt.Sprint("m-", n, "-", i)}
					items[i] = e
				}
				n++
				res, err := a.Apply(ctx, 0, offset-boolToInt(offset == 0), batch(offset, items...))
				if err != nil {
					b.Fatal(err)
				}
				offset = res.NextOffset
			}
		})
	}
}
