package stripeapi_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/stripeapi"
	"github.com/usagemeter/metering/internal/testkit/stripemock"
)

// TestContractWithStripeMock sends every Stripe request the biller makes
// to stripe-mock, which rejects any request whose shape does not match
// Stripe's API.
func TestContractWithStripeMock(t *testing.T) {
	base := stripemock.Start(t)
	c := stripeapi.NewClient("sk_test_123", base, 10*time.Second)
	ctx := context.Background()
	minute := time.Now().Truncate(time.Minute)
	tests := []struct {
		name string
		call func() error
	}{
		{"meter event", func() error {
			return c.SendMeterEvent(ctx, "api_calls", "mu_0123456789abcdef", "cus_123", "9007199254740993", time.Now())
		}},
		{"meter event adjustment (cancel)", func() error { return c.CancelMeterEvent(ctx, "api_calls", "mu_0123456789abcdef") }},
		{"list meters", func() error {
			meters, err := c.Meters(ctx)
			if err == nil && len(meters) == 0 {
				return errors.New("no meters listed")
			}
			return err
		}},
		{"event summaries", func() error {
			_, err := c.Summary(ctx, "mtr_123", "cus_123", minute.Add(-time.Hour), minute)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); err != nil {
				t.Fatalf("stripe-mock rejected the request: %v", err)
			}
		})
	}
	// And stripe-mock does reject a malformed one: the check is real.
	req, _ := http.NewRequest("POST", base+"/v1/billing/meter_events", strings.NewReader("payload[value]=1"))
	req.Header.Set("Authorization", "Bearer sk_test_123")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("stripe-mock answered %d to a meter event without event_name", resp.StatusCode)
	}
}
