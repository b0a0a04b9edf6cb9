package notify_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/notify"
)

// verify is a receiver's reference verifier, written from the README's
// recipe and not from notify.Sign: parse "t=<unix>,v1=<hex>[,v1=...]",
// refuse a timestamp more than tolerance away from now, and accept when
// any v1 equals HMAC-SHA256(secret, "<t>.<body>"), compared in constant
// time.
func verify(header string, body []byte, secret string, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return errors.New("malformed header")
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil {
				return errors.New("malformed signature")
			}
			sigs = append(sigs, b)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("no timestamp")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("timestamp outside the tolerance")
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "." + string(body)))
	want := mac.Sum(nil)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return errors.New("no signature matches")
}

func TestSignaturesVerify(t *testing.T) {
	t.Parallel()
	body := []byte(`{"id":"e1","type":"quota.exceeded","created":1,"tenant":"acme","data":{}}`)
	now := time.Unix(1_800_000_000, 0)
	const current, previous = "whsec_new", "whsec_old"
	for _, tt := range []struct {
		name    string
		header  string
		secret  string
		body    []byte
		at      time.Time
		wantErr bool
	}{
		{"current secret", notify.Sign([]string{current}, now, body), current, body, now, false},
		{"during a rotation, the new secret", notify.Sign([]string{current, previous}, now, body), current, body, now, false},
		{"during a rotation, the old secret", notify.Sign([]string{current, previous}, now, body), previous, body, now, false},
		{"after the overlap the old secret fails", notify.Sign([]string{current}, now, body), previous, body, now, true},
		{"a body changed by one byte", notify.Sign([]string{current}, now, body), current, append([]byte{' '}, body...), now, true},
		{"a replay 6 minutes later", notify.Sign([]string{current}, now, body), current, body, now.Add(6 * time.Minute), true},
		{"4 minutes of clock skew", notify.Sign([]string{current}, now, body), current, body, now.Add(-4 * time.Minute), false},
		{"a timestamp changed", strings.Replace(notify.Sign([]string{current}, now, body), "t=1800000000", "t=1800000001", 1), current, body, now, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := verify(tt.header, tt.body, tt.secret, tt.at, 5*time.Minute)
			if (err != nil) != tt.wantErr {
				t.Fatalf("verify(%s) = %v, want error %v", tt.header, err, tt.wantErr)
			}
		})
	}
	if h := notify.Sign([]string{current, previous}, now, body); strings.Count(h, ",v1=") != 2 || !strings.HasPrefix(h, "t=1800000000,v1=") {
		t.Errorf("header %q: want t= then two v1=", h)
	}
}

func TestDecodeSources(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, topic, value string
		wantID, wantType   string
		wantData           string
		wantErr, ignored   bool
	}{
		{name: "quota breach", topic: notify.QuotaBreachesTopic,
			value:  `{"breach_id":"b1","tenant":"acme","metric":"api_calls","meter":"api_calls","group":{},"threshold":"exceeded","limit":10,"value":11,"detected_at":"2026-11-21T19:00:00Z"}`,
			wantID: "b1", wantType: "quota.exceeded", wantData: `"threshold":"exceeded"`},
		{name: "overage started", topic: notify.BillingEventsTopic,
			value:  `{"id":"o1","type":"overage.started","tenant":"acme","occurred_at":"2026-11-21T19:00:00Z","data":{"meter":"tokens","usage":5}}`,
			wantID: "o1", wantType: "overage.started", wantData: `{"meter":"tokens","usage":5}`},
		{name: "another billing event", topic: notify.BillingEventsTopic,
			value: `{"id":"p1","type":"period.closed","tenant":"acme","occurred_at":"2026-11-21T19:00:00Z","data":{}}`, ignored: true},
		{name: "anomaly", topic: notify.AnomaliesTopic,
			value:  `{"id":"a1","type":"anomaly.spike","tenant":"acme","meter":"tokens","hour":"2026-11-21T19:00:00Z","observed":900,"expected":100,"score":"8.1","sensitivity":"3","detected_at":"2026-11-21T20:01:00Z"}`,
			wantID: "a1", wantType: "anomaly.spike", wantData: `"observed":900`},
		{name: "a duplicate key", topic: notify.QuotaBreachesTopic,
			value: `{"breach_id":"b1","tenant":"acme","tenant":"other","threshold":"exceeded"}`, wantErr: true},
		{name: "unknown threshold", topic: notify.QuotaBreachesTopic, value: `{"breach_id":"b1","tenant":"acme","threshold":"boom"}`, wantErr: true},
		{name: "too deep", topic: notify.AnomaliesTopic, value: `{"id":"a","type":"anomaly.drop","tenant":"t","x":` + strings.Repeat("[", 50) + strings.Repeat("]", 50) + `}`, wantErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := notify.Decode(tt.topic, []byte(tt.value))
			switch {
			case tt.ignored:
				if !errors.Is(err, notify.ErrIgnored) {
					t.Fatalf("err %v, want ErrIgnored", err)
				}
				return
			case tt.wantErr:
				if err == nil || errors.Is(err, notify.ErrIgnored) {
					t.Fatalf("err %v, want a decoding error", err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if ev.ID != tt.wantID || ev.Type != tt.wantType || ev.Tenant != "acme" || !strings.Contains(string(ev.Data), tt.wantData) {
				t.Errorf("got %+v (data %s)", ev, ev.Data)
			}
			body, err := ev.Body()
			if err != nil || !strings.HasPrefix(string(body), `{"id":"`+tt.wantID+`","type":"`+tt.wantType+`","created":`) {
				t.Errorf("body %s %v", body, err)
			}
		})
	}
}

func TestStableIDs(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := notify.Spend{Threshold: "100.00", ProjectedTotal: "120.00", PeriodStart: start, PeriodEnd: start.AddDate(0, 1, 0)}
	a, _ := notify.SpendThreshold("acme", s, start.Add(time.Hour))
	s.Threshold, s.ProjectedTotal = "100", "150.00"
	b, _ := notify.SpendThreshold("acme", s, start.Add(2*time.Hour))
	if a.ID != b.ID {
		t.Errorf("one threshold of one period got two ids: %s %s", a.ID, b.ID)
	}
	s.PeriodStart = start.AddDate(0, 1, 0)
	c, _ := notify.SpendThreshold("acme", s, start)
	d, _ := notify.SpendThreshold("globex", s, start)
	if c.ID == a.ID || c.ID == d.ID {
		t.Errorf("another period or tenant shares an id")
	}
	exp := start.AddDate(0, 0, 20)
	g1, _ := notify.GrantExpiring("acme", notify.Grant{ID: "g", ExpiresAt: exp}, start)
	g2, _ := notify.GrantExpiring("acme", notify.Grant{ID: "g", ExpiresAt: exp}, start.Add(time.Hour))
	if g1.ID != g2.ID {
		t.Errorf("grant.expiring of one grant got two ids")
	}
}

func TestReachedIsExact(t *testing.T) {
	t.Parallel()
	got, err := notify.Reached("100.00", []string{"99.99", "100", "100.01", "0.1"})
	if err != nil || strings.Join(got, " ") != "99.99 100 0.1" {
		t.Fatalf("Reached = %v %v", got, err)
	}
	if _, err := notify.Reached("1e3", []string{"x"}); err == nil {
		t.Fatal("a threshold that is no decimal was accepted")
	}
}

func TestBackoffGrowsWithJitterUpToTheCap(t *testing.T) {
	t.Parallel()
	p := notify.Policy{InitialInterval: 30 * time.Second, MaxInterval: 6 * time.Hour}
	for _, tt := range []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, 15 * time.Second, 45 * time.Second},
		{2, 30 * time.Second, 90 * time.Second},
		{5, 240 * time.Second, 720 * time.Second},
		{30, 3 * time.Hour, 9 * time.Hour},
	} {
		for range 20 {
			if d := p.Wait(tt.attempt); d < tt.min || d > tt.max {
				t.Fatalf("wait after attempt %d = %s, want in [%s, %s]", tt.attempt, d, tt.min, tt.max)
			}
		}
	}
}
