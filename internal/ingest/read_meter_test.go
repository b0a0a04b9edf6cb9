package ingest_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
	"github.com/usagemeter/metering/internal/storage/accounts"
	"github.com/usagemeter/metering/internal/storage/usagedata"
	"github.com/usagemeter/metering/internal/windows"
)

// countMeter defines d and counts evs into its hour windows, as the
// aggregator does.
func countMeter(t *testing.T, e *env, d meter.Definition, evs []events.Event) {
	t.Helper()
	ctx := context.Background()
	if _, _, err := accounts.PutMeter(ctx, e.db.Pool, accounts.Meter{Name: d.Name, Metric: d.Metric, Aggregation: string(d.Aggregation),
		GroupBy: d.GroupBy, Filter: d.Filter, Property: d.Property}); err != nil {
		t.Fatal(err)
	}
	var a usagedata.MeterAdds
	for _, ev := range evs {
		if d.Matches(ev) {
			a.Append(ev.Tenant, d.Name, d.Group(ev).Key(), string(windows.Hour), windows.Hour.Start(ev.Time), d.Contribution(ev), 1)
		}
	}
	if err := usagedata.AddMeterWindows(ctx, e.db.Pool, a); err != nil {
		t.Fatal(err)
	}
}

func TestMeterUsage(t *testing.T) {
	e := newEnv(t, envOpts{})
	_, acme := e.createKey(`{"tenant":"acme"}`)
	_, viewer := e.createKey(`{"role":"viewer"}`)
	h := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	ev := func(id string, at time.Duration, value int64, props ...string) events.Event {
		p := map[string]string{}
		for i := 0; i < len(props); i += 2 {
			p[props[i]] = props[i+1]
		}
		return events.Event{Tenant: "acme", Metric: "tokens", ID: id, Value: value, Time: h.Add(at), Properties: p}
	}
	evs := []events.Event{
		ev("1", 5*time.Minute, 10, "model", "gpt-4", "region", "eu", "user", "u1"),
		ev("2", 6*time.Minute, 20, "model", "gpt-4", "region", "us", "user", "u2"),
		ev("3", 7*time.Minute, 5, "model", "small", "region", "eu", "user", "u1"),
		ev("4", 65*time.Minute, 9223372036854775807, "model", "gpt-4", "region", "eu", "user", "u1"),
		ev("5", 66*time.Minute, 1, "region", "eu", "user", "u3"),
	}
	countMeter(t, e, meter.Definition{Name: "tokens_by_model", Metric: "tokens", Aggregation: meter.Sum, GroupBy: []string{"model", "region"}}, evs)
	countMeter(t, e, meter.Definition{Name: "users_by_region", Metric: "tokens", Aggregation: meter.UniqueCount, GroupBy: []string{"model", "region"}, Property: "user"}, evs)
	e.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, granularity, window_start, value, events) VALUES
		('acme', 'api_calls', 'hour', $1, 50, 50), ('acme', 'api_calls', 'hour', $1::timestamptz + interval '1 hour', 70, 70)`, h)
	span := "&window=hour&from=2026-11-03T10:00:00Z&to=2026-11-03T12:00:00Z"

	t.Run("grouped and filtered", func(t *testing.T) {
		r := e.do("GET", "/v1/usage?tenant=acme&meter=tokens_by_model&group_by=model&filter[region]=eu"+span, acme, "", "")
		want := `{"aggregation":"sum","filter":{"region":"eu"},"from":"2026-11-03T10:00:00Z","group_by":["model"],"meter":"tokens_by_model","metric":"tokens",` +
			`"tenant":"acme","to":"2026-11-03T12:00:00Z","total":9223372036854775823,` +
			`"totals":[{"group":{"model":null},"value":1,"events":1},{"group":{"model":"gpt-4"},"value":9223372036854775817,"events":2},{"group":{"model":"small"},"value":5,"events":1}],` +
			`"window":"hour","windows":[` +
			`{"start":"2026-11-03T11:00:00Z","end":"2026-11-03T12:00:00Z","value":1,"events":1,"group":{"model":null}},` +
			`{"start":"2026-11-03T10:00:00Z","end":"2026-11-03T11:00:00Z","value":10,"events":1,"group":{"model":"gpt-4"}},` +
			`{"start":"2026-11-03T11:00:00Z","end":"2026-11-03T12:00:00Z","value":9223372036854775807,"events":1,"group":{"model":"gpt-4"}},` +
			`{"start":"2026-11-03T10:00:00Z","end":"2026-11-03T11:00:00Z","value":5,"events":1,"group":{"model":"small"}}]}` + "\n"
		if r.status != 200 || r.raw != want {
			t.Fatalf("got  %d %s\nwant %s", r.status, r.raw, want)
		}
	})
	t.Run("unique_count folds distinct values", func(t *testing.T) {
		r := e.do("GET", "/v1/usage?tenant=acme&meter=users_by_region&group_by=region"+span, viewer, "", "")
		if r.status != 200 || !strings.Contains(r.raw, `"totals":[{"group":{"region":"eu"},"value":2,"events":4},{"group":{"region":"us"},"value":1,"events":1}]`) ||
			!strings.Contains(r.raw, `"total":3,`) {
			t.Fatalf("%d %s", r.status, r.raw)
		}
	})
	t.Run("no group_by: one group of everything", func(t *testing.T) {
		r := e.do("GET", "/v1/usage?tenant=acme&meter=tokens_by_model&window=hour&from=2026-11-03T10:00:00Z&to=2026-11-03T11:00:00Z", acme, "", "")
		if r.status != 200 || !strings.Contains(r.raw, `"group_by":[],`) || !strings.Contains(r.raw, `"totals":[{"group":{},"value":35,"events":3}]`) {
			t.Fatalf("%d %s", r.status, r.raw)
		}
	})
	t.Run("metric= is unchanged", func(t *testing.T) {
		r := e.do("GET", "/v1/usage?tenant=acme&metric=api_calls"+span, acme, "", "")
		want := `{"from":"2026-11-03T10:00:00Z","metric":"api_calls","tenant":"acme","to":"2026-11-03T12:00:00Z","total":120,"window":"hour","windows":[` +
			`{"start":"2026-11-03T10:00:00Z","end":"2026-11-03T11:00:00Z","value":50,"events":50},{"start":"2026-11-03T11:00:00Z","end":"2026-11-03T12:00:00Z","value":70,"events":70}]}` + "\n"
		if r.status != 200 || r.raw != want {
			t.Fatalf("got  %d %s\nwant %s", r.status, r.raw, want)
		}
	})
	t.Run("an undefined meter is the implicit meter", func(t *testing.T) {
		r := e.do("GET", "/v1/usage?tenant=acme&meter=api_calls"+span, acme, "", "")
		if r.status != 200 || r.body["aggregation"] != "sum" || r.body["metric"] != "api_calls" || r.body["total"] != float64(120) ||
			!strings.Contains(r.raw, `"windows":[{"start":"2026-11-03T10:00:00Z","end":"2026-11-03T11:00:00Z","value":50,"events":50,"group":{}},`) {
			t.Fatalf("%d %s", r.status, r.raw)
		}
		r = e.do("GET", "/v1/usage?tenant=acme&meter=never_counted"+span, acme, "", "")
		if r.status != 200 || r.body["total"] != float64(0) || !strings.Contains(r.raw, `"windows":[]`) || !strings.Contains(r.raw, `"totals":[]`) {
			t.Fatalf("%d %s", r.status, r.raw)
		}
	})
	// A tenant key of another tenant reads nothing of acme's.
	_, globex := e.createKey(`{"tenant":"globex"}`)
	if r := e.do("GET", "/v1/usage?tenant=acme&meter=tokens_by_model"+span, globex, "", ""); r.status != http.StatusForbidden {
		t.Fatalf("other tenant: %d %s", r.status, r.raw)
	}

	tests := []struct{ name, query, message string }{
		{"metric and meter", "metric=tokens&meter=tokens_by_model", "mutually exclusive"},
		{"neither", "window=hour", "metric or meter is required"},
		{"empty meter", "meter=", "meter must be"},
		{"bad meter name", "meter=a/b", "meter must be"},
		{"group_by with metric", "metric=tokens&group_by=model", "need meter="},
		{"filter with metric", "metric=tokens&filter[model]=x", "need meter="},
		{"group_by outside the meter's", "meter=tokens_by_model&group_by=user", `meter "tokens_by_model" groups only by model, region, not "user"`},
		{"filter outside the meter's", "meter=tokens_by_model&filter[user]=u1", `filter[user]: meter "tokens_by_model" groups only by model, region`},
		{"groups of an implicit meter", "meter=api_calls&group_by=model", "implicit meter"},
		{"group_by twice", "meter=tokens_by_model&group_by=model&group_by=model", "twice"},
		{"empty group_by", "meter=tokens_by_model&group_by=", "must not be empty"},
		{"too many group_by", "meter=tokens_by_model&group_by=a&group_by=b&group_by=c&group_by=d&group_by=e&group_by=f", "at most 5"},
		{"filter twice", "meter=tokens_by_model&filter[model]=a&filter[model]=b", "given 2 times"},
		{"filter without brackets", "meter=tokens_by_model&filter=a", "filter[property]=value"},
		{"filter unclosed", "meter=tokens_by_model&filter[model=a", "filter[property]=value"},
		{"filter of no property", "meter=tokens_by_model&" + url.QueryEscape("filter[]") + "=a", "must not be empty"},
		{"range too long for the meter", "meter=tokens_by_model&window=minute&from=2026-01-01T00:00:00Z&to=2026-11-01T00:00:00Z", "at most 10000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do("GET", "/v1/usage?tenant=acme&"+tt.query, viewer, "", "")
			msg, _ := r.body["error"].(map[string]any)["message"].(string)
			if r.status != http.StatusBadRequest || errorCode(r) != "invalid_request" || !strings.Contains(msg, tt.message) {
				t.Fatalf("got %d %s, want 400 saying %q", r.status, r.raw, tt.message)
			}
		})
	}
}

// More windows than one answer holds (groups times windows) is a 400 that
// says how to narrow the query.
func TestMeterUsageTooManyWindows(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	if _, _, err := accounts.PutMeter(ctx, e.db.Pool, accounts.Meter{Name: "by_user", Metric: "calls", Aggregation: "count", GroupBy: []string{"user"}}); err != nil {
		t.Fatal(err)
	}
	e.db.Exec(t, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT 'acme', 'by_user', '["u' || u || '"]', 'hour', '2026-11-03T00:00:00Z'::timestamptz + make_interval(hours => h), 1, 1
		FROM generate_series(0, 1000) u, generate_series(0, 9) h`)
	span := "&window=hour&from=2026-11-03T00:00:00Z&to=2026-11-04T00:00:00Z"
	r := e.do("GET", "/v1/usage?tenant=acme&meter=by_user&group_by=user"+span, adminKey, "", "")
	if r.status != http.StatusBadRequest || !strings.Contains(r.raw, "more than 10000 windows") {
		t.Fatalf("%d %s", r.status, r.raw[:min(len(r.raw), 300)])
	}
	r = e.do("GET", "/v1/usage?tenant=acme&meter=by_user"+span, adminKey, "", "")
	if r.status != 200 || r.body["total"] != float64(10010) || len(r.body["windows"].([]any)) != 10 {
		t.Fatalf("%d %s", r.status, r.raw[:min(len(r.raw), 300)])
	}
}
