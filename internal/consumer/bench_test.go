package consumer_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
)

// BenchmarkKafkaConsumeCeiling reads pre-produced events with one kafka-go
// reader per partition (4), as the aggregator's consumer does, and does
// nothing with them: the most the aggregator could consume from the broker.
func BenchmarkKafkaConsumeCeiling(b *testing.B) {
	kc := kafkatest.Start(b)
	kc.CreateTopic(b, "bench", 4)
	p, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers(), Topic: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	const per = 10000
	total := b.N * per
	for sent := 0; sent < total; sent += per {
		evs := make([]events.Event, per)
		for i := range evs {
			evs[i] = events.New("tenant-"+string(rune('a'+i%26)), "api_calls", 1)
		}
		if err := p.Emit(context.Background(), evs...); err != nil {
			b.Fatal(err)
		}
	}
	ends := make([]int64, 4)
	for part := range 4 {
		conn, err := kafka.DialLeader(context.Background(), "tcp", kc.Addr(), "bench", part)
		if err != nil {
			b.Fatal(err)
		}
		if ends[part], err = conn.ReadLastOffset(); err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for part := range 4 {
		wg.Go(func() {
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: kc.Brokers(), Topic: "bench", Partition: part, MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 50 * time.Millisecond})
			defer r.Close()
			for next := int64(0); next < ends[part]; {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					b.Error(err)
					return
				}
				next = m.Offset + 1
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "events/s")
}
