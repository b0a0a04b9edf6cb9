package events_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/testkit/kafkatest"
)

func TestProducerEmit(t *testing.T) {
	kc := kafkatest.Start(t)
	kc.CreateTopic(t, events.Topic, 4)
	p, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	var sent []events.Event
	for i := range 50 {
		e := events.New([]string{"acme", "globex", "initech"}[i%3], "api_calls", int64(i))
		e.Properties = map[string]string{"n": string(rune('a' + i%26))}
		sent = append(sent, e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Emit(ctx, sent...); err != nil {
		t.Fatalf("Emit: %v", err)
	}

	msgs := kafkatest.ReadAll(t, kc.Brokers(), events.Topic)
	if len(msgs) != len(sent) {
		t.Fatalf("topic has %d messages, want %d", len(msgs), len(sent))
	}
	byID := map[string]events.Event{}
	for _, e := range sent {
		byID[e.ID] = e
	}
	partitionOf := map[string]int{}
	for _, m := range msgs {
		var got events.Event
		if err := got.UnmarshalJSON(m.Value); err != nil {
			t.Fatalf("message %s: %v", m.Value, err)
		}
		want, ok := byID[got.ID]
		if !ok {
			t.Fatalf("unexpected message %s", m.Value)
		}
		if string(m.Key) != want.Tenant {
			t.Errorf("key = %q, want tenant %q", m.Key, want.Tenant)
		}
		if string(m.Value) != string(want.AppendJSON(nil)) {
			t.Errorf("value = %s, want canonical %s", m.Value, want.AppendJSON(nil))
		}
		if p, seen := partitionOf[want.Tenant]; seen && p != m.Partition {
			t.Errorf("tenant %s on partitions %d and %d", want.Tenant, p, m.Partition)
		}
		partitionOf[want.Tenant] = m.Partition
		delete(byID, got.ID)
	}
}

func TestProducerRejectsInvalidBeforeSending(t *testing.T) {
	kc := kafkatest.Start(t)
	p, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	good := events.New("acme", "api_calls", 1)
	bad := events.New("acme", "api calls", -1)
	err = p.Emit(context.Background(), good, bad)
	ve, ok := events.AsValidationError(err)
	if !ok || len(ve.Errors) != 2 || ve.Errors[0].Index != 1 {
		t.Fatalf("Emit = %v, want 2 field errors of event 1", err)
	}
	if msgs := kafkatest.ReadAll(t, kc.Brokers(), events.Topic); len(msgs) != 0 {
		t.Fatalf("%d messages published, want none", len(msgs))
	}
}

func TestProducerBrokerDown(t *testing.T) {
	kc := kafkatest.Start(t)
	brokers := kc.Brokers()
	kc.Close()
	p, err := events.NewProducer(events.ProducerConfig{Brokers: brokers, MaxAttempts: 3, BackoffMin: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	err = p.Emit(ctx, events.New("acme", "api_calls", 1))
	if err == nil {
		t.Fatal("Emit to a stopped broker succeeded")
	}
	if _, ok := events.AsValidationError(err); ok {
		t.Fatalf("got a validation error: %v", err)
	}
	if time.Since(start) > 5*time.Second+time.Second || errors.Is(err, context.Canceled) {
		t.Fatalf("Emit did not honour its context: %v after %v", err, time.Since(start))
	}
}

func TestNewProducerNeedsBrokers(t *testing.T) {
	if _, err := events.NewProducer(events.ProducerConfig{}); err == nil {
		t.Fatal("NewProducer with no brokers succeeded")
	}
}

func TestProducerValidatesWithItsValidator(t *testing.T) {
	kc := kafkatest.Start(t)
	kc.CreateTopic(t, events.Topic, 1)
	old := events.New("acme", "api_calls", 1)
	old.Time = time.Now().Add(-events.DefaultHorizon - time.Hour)
	for _, tc := range []struct {
		name   string
		v      events.Validator
		accept bool
	}{
		{"the default horizon refuses it", events.Validator{}, false},
		{"a longer horizon takes it", events.Validator{Horizon: 2 * events.DefaultHorizon}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers(), Validator: tc.v})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = p.Emit(ctx, old)
			if _, invalid := events.AsValidationError(err); invalid == tc.accept || (tc.accept && err != nil) {
				t.Fatalf("Emit = %v, want accepted %v", err, tc.accept)
			}
		})
	}
	if msgs := kafkatest.ReadAll(t, kc.Brokers(), events.Topic); len(msgs) != 1 {
		t.Fatalf("topic has %d messages, want the one the longer horizon took", len(msgs))
	}
}
