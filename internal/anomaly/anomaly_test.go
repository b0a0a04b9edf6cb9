package anomaly_test

import (
	"encoding/json"
	"math/big"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/anomaly"
)

func ints(vs ...int64) []*big.Int {
	out := make([]*big.Int, len(vs))
	for i, v := range vs {
		out[i] = big.NewInt(v)
	}
	return out
}

// TestJudgeExact: medians, scores and verdicts are exact, the floors hold
// (a series going 0 -> 3 is normal; a flat series is not flagged for a
// few percent), and a drop needs a meaningful expected value.
func TestJudgeExact(t *testing.T) {
	t.Parallel()
	twelve := func(v int64) []*big.Int {
		return ints(v, v, v, v, v, v, v, v, v, v, v, v)
	}
	huge, _ := new(big.Int).SetString("123456789012345678901234567890", 10)
	tests := []struct {
		name     string
		observed *big.Int
		baseline []*big.Int
		dir      anomaly.Direction
		expected string
		score    string
	}{
		{"0 to 3 calls", big.NewInt(3), twelve(0), "", "0", "3.00"},
		{"0 to 50 calls", big.NewInt(50), twelve(0), anomaly.Spike, "0", "50.00"},
		{"flat series, 5 % more", big.NewInt(1050), twelve(1000), "", "1000", "0.50"},
		{"flat series, x5", big.NewInt(5000), twelve(1000), anomaly.Spike, "1000", "40.00"},
		{"flat series, to 10 %", big.NewInt(100), twelve(1000), anomaly.Drop, "1000", "-9.00"},
		{"drop of a small series", big.NewInt(0), twelve(8), "", "8", "-8.00"},
		{"even count: median between", big.NewInt(110), ints(100, 101, 102, 103), "", "101.5", "0.84"},
		{"noisy: MAD scale, under", big.NewInt(1500), ints(900, 1000, 1100, 1000, 800, 1200), "", "1000", "3.37"},
		{"noisy: MAD scale, over", big.NewInt(1700), ints(900, 1000, 1100, 1000, 800, 1200), anomaly.Spike, "1000", "4.72"},
		{"exact at the sensitivity", big.NewInt(1400), twelve(1000), anomaly.Spike, "1000", "4.00"},
		{"just under", big.NewInt(1399), twelve(1000), "", "1000", "3.99"},
		{"beyond int64", new(big.Int).Mul(huge, big.NewInt(10)), []*big.Int{huge, huge, huge}, anomaly.Spike, huge.String(), "90.00"},
	}
	c := anomaly.DefaultConfig()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			j := c.Judge(tt.observed, tt.baseline)
			if j.Direction != tt.dir || anomaly.Decimal(j.Expected) != tt.expected || j.Score.FloatString(2) != tt.score {
				t.Errorf("Judge = %q expected %s score %s, want %q %s %s", j.Direction, anomaly.Decimal(j.Expected), j.Score.FloatString(2), tt.dir, tt.expected, tt.score)
			}
		})
	}
}

// TestDetectRepeatable: judging an hour twice gives the same episode id;
// an open episode is extended by the next anomalous hour of its direction,
// ended by a normal hour or one of the other direction (which opens its
// own), and left alone when the hour was judged already; an immature
// series is not flagged.
func TestDetectRepeatable(t *testing.T) {
	t.Parallel()
	c := anomaly.DefaultConfig()
	s := anomaly.Series{Tenant: "acme", Meter: "api_calls"}
	h := time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)
	hour := func(start time.Time, observed int64, open map[anomaly.Series]anomaly.Episode) anomaly.Hour {
		ts := map[int64]*big.Int{start.Unix(): big.NewInt(observed)}
		for _, b := range c.BaselineHours(start) {
			ts[b.Unix()] = big.NewInt(1000)
		}
		return anomaly.Hour{Start: start, Totals: map[anomaly.Series]map[int64]*big.Int{s: ts}, Open: open, DetectedAt: start.Add(time.Hour)}
	}
	d1, _ := c.Detect(hour(h, 9000, nil))
	d2, _ := c.Detect(hour(h, 9000, nil))
	if len(d1.Flagged) != 1 || len(d2.Flagged) != 1 || d1.Flagged[0].ID != d2.Flagged[0].ID || d1.Flagged[0].ID != anomaly.EpisodeID(s, anomaly.Spike, h) {
		t.Fatalf("repeated: %+v %+v", d1, d2)
	}
	open := map[anomaly.Series]anomaly.Episode{s: d1.Flagged[0].Episode}
	next := h.Add(time.Hour)
	if d, _ := c.Detect(hour(next, 9000, open)); len(d.Extended) != 1 || !d.Extended[0].LastHour.Equal(next) || len(d.Flagged)+len(d.Ended) != 0 {
		t.Errorf("high again: %+v", d)
	}
	if d, _ := c.Detect(hour(next, 1000, open)); len(d.Ended) != 1 || !d.Ended[0].EndedAt.Equal(next) || len(d.Flagged) != 0 {
		t.Errorf("normal again: %+v", d)
	}
	if d, _ := c.Detect(hour(next, 10, open)); len(d.Ended) != 1 || len(d.Flagged) != 1 || d.Flagged[0].Direction != anomaly.Drop {
		t.Errorf("the other way: %+v", d)
	}
	if d, _ := c.Detect(hour(h, 1000, open)); len(d.Ended)+len(d.Flagged)+len(d.Extended) != 0 {
		t.Errorf("an hour judged already changed the episode: %+v", d)
	}
	// A gap (an hour not judged): the old episode ends, a new one begins.
	later := h.Add(3 * time.Hour)
	if d, _ := c.Detect(hour(later, 9000, open)); len(d.Ended) != 1 || !d.Ended[0].EndedAt.Equal(next) || len(d.Flagged) != 1 {
		t.Errorf("after a gap: %+v", d)
	}
	// An open episode of a series with no total at all this hour ends.
	if d, _ := c.Detect(anomaly.Hour{Start: next, Open: open}); len(d.Ended) != 1 {
		t.Errorf("series gone: %+v", d)
	}
	young := hour(h, 9000, nil)
	young.Mature = func(anomaly.Series) (bool, error) { return false, nil }
	if d, _ := c.Detect(young); len(d.Flagged) != 0 {
		t.Errorf("an immature series was flagged: %+v", d)
	}
}

// TestPayload pins the usage.anomalies payload: field names, order and
// string forms.
func TestPayload(t *testing.T) {
	t.Parallel()
	s := anomaly.Series{Tenant: "acme", Meter: "api_calls"}
	h := time.Date(2026, 11, 21, 14, 0, 0, 0, time.FixedZone("x", 3600))
	sens, _ := anomaly.ParseSensitivity("3.50")
	a := anomaly.Anomaly{
		Episode:  anomaly.Episode{ID: anomaly.EpisodeID(s, anomaly.Drop, h), Series: s, Direction: anomaly.Drop, Hour: h, LastHour: h},
		Observed: big.NewInt(12), Expected: big.NewRat(2001, 2), Score: big.NewRat(-98855, 10000), Sensitivity: sens,
		DetectedAt: time.Date(2026, 11, 21, 14, 10, 3, 5e8, time.UTC),
	}
	b, err := a.Message()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"` + a.ID + `","type":"anomaly.drop","tenant":"acme","meter":"api_calls","hour":"2026-11-21T13:00:00Z","observed":"12","expected":"1000.5","score":"-9.89","sensitivity":"3.5","detected_at":"2026-11-21T14:10:03Z"}`
	if string(b) != want {
		t.Errorf("message\n%s\nwant\n%s", b, want)
	}
	var back anomaly.Payload
	if err := json.Unmarshal(b, &back); err != nil || back != a.Payload() {
		t.Errorf("round trip: %+v, %v", back, err)
	}
}

// TestConfig: sensitivities parse exactly and refuse what is not a
// positive decimal; Validate names each wrong field.
func TestConfig(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"0", "-1", "1e3", "abc", "", "1.", ".5", "1234567"} {
		if _, err := anomaly.ParseSensitivity(s); err == nil {
			t.Errorf("ParseSensitivity(%q) accepted", s)
		}
	}
	if r, err := anomaly.ParseSensitivity("4.25"); err != nil || r.Cmp(big.NewRat(17, 4)) != 0 {
		t.Errorf("ParseSensitivity(4.25) = %v, %v", r, err)
	}
	if err := anomaly.DefaultConfig().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	if err := (anomaly.Config{Neighbours: -1}).Validate(); err == nil {
		t.Error("an empty config validated")
	}
}
