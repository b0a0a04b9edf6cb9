package notify_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/internal/notify"
	"github.com/usagemeter/metering/internal/storage/webhooks"
)

// BenchmarkDispatch sends b.N queued deliveries, spread over 8 endpoints
// of one loopback receiver, with 4 workers: claims, signed POSTs and
// settlements, end to end.
func BenchmarkDispatch(b *testing.B) {
	ctx := context.Background()
	now := time.Now().UTC()
	rcv := newReceiver(b, func(int, http.ResponseWriter) {})
	db, ep := setup(b, rcv.srv.URL, now)
	eps := []webhooks.Endpoint{ep}
	for range 7 {
		e, err := webhooks.CreateEndpoint(ctx, db.Pool, webhooks.Endpoint{ID: uuid.NewString(), Tenant: "acme", URL: rcv.srv.URL,
			Kinds: notify.Kinds, Secret: "whsec_b", CreatedAt: now})
		if err != nil {
			b.Fatal(err)
		}
		eps = append(eps, e)
	}
	var evs []notify.Event
	for i := range b.N {
		evs = append(evs, breach(fmt.Sprint("b", i), "acme"))
	}
	for i := 0; i < len(evs); i += 500 {
		if _, err := notify.Queue(ctx, db.Pool, notify.Policy{}, now, evs[i:min(i+500, len(evs))]...); err != nil {
			b.Fatal(err)
		}
	}
	d := &notify.Dispatcher{DB: db.Pool, Workers: 4, Batch: 64}
	b.ResetTimer()
	sent := 0
	for {
		n, err := d.RunOnce(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if n == 0 {
			break
		}
		sent += n
	}
	b.StopTimer()
	if sent != 8*b.N {
		b.Fatalf("sent %d, want %d", sent, 8*b.N)
	}
	b.ReportMetric(float64(sent)/b.Elapsed().Seconds(), "deliveries/s")
}
