package service_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/metering/internal/service"
)

// fake is a Service that records when it returns; wg counts the fakes
// still running.
type fake struct {
	name    string
	failNow error // returned at once, before ctx ends
	endNow  bool  // returns nil at once
	failEnd error // returned when stopped
	wg      *sync.WaitGroup
	mu      *sync.Mutex
	order   *[]string
}

func (f fake) Name() string { return f.name }

func (f fake) Run(ctx context.Context) error {
	f.wg.Add(1)
	defer f.wg.Done()
	err := f.failNow
	if err == nil && !f.endNow {
		<-ctx.Done()
		// Time for a service stopped alongside to return first, were
		// the stops not in order.
		time.Sleep(5 * time.Millisecond)
		err = f.failEnd
	}
	f.mu.Lock()
	*f.order = append(*f.order, f.name)
	f.mu.Unlock()
	return err
}

func TestRunAll(t *testing.T) {
	errA, errB := errors.New("a failed"), errors.New("b failed")
	tests := []struct {
		name      string
		svcs      []fake
		cancel    bool // the caller's ctx ends
		wantErr   error
		wantOrder []string
	}{
		{name: "ctx cancel stops all, last listed first", cancel: true,
			svcs: []fake{{name: "relay"}, {name: "loop"}, {name: "http"}}, wantOrder: []string{"http", "loop", "relay"}},
		{name: "a failing service stops the others and its error is returned",
			svcs:    []fake{{name: "relay"}, {name: "consumer", failNow: errA}, {name: "http"}},
			wantErr: errA, wantOrder: []string{"consumer", "http", "relay"}},
		{name: "the first error is returned, not one met while stopping",
			svcs:    []fake{{name: "relay", failEnd: errB}, {name: "http", failNow: errA}},
			wantErr: errA, wantOrder: []string{"http", "relay"}},
		{name: "an error while stopping is returned when none came before", cancel: true,
			svcs:    []fake{{name: "relay", failEnd: errB}, {name: "http"}},
			wantErr: errB, wantOrder: []string{"http", "relay"}},
		{name: "a service that ends stops the others",
			svcs:      []fake{{name: "relay"}, {name: "loop", endNow: true}, {name: "http"}},
			wantOrder: []string{"loop", "http", "relay"}},
		{name: "no services: returns when ctx ends", cancel: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var wg sync.WaitGroup
			var mu sync.Mutex
			var order []string
			svcs := make([]service.Service, len(tt.svcs))
			for i, f := range tt.svcs {
				f.wg, f.mu, f.order = &wg, &mu, &order
				svcs[i] = f
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tt.cancel {
				time.AfterFunc(20*time.Millisecond, cancel)
			}
			done := make(chan error, 1)
			go func() { done <- service.RunAll(ctx, slog.New(slog.DiscardHandler), svcs...) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("RunAll did not return")
			}
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Errorf("RunAll = %v, want %v", err, tt.wantErr)
			}
			mu.Lock()
			got := slices.Clone(order)
			mu.Unlock()
			if !slices.Equal(got, tt.wantOrder) {
				t.Errorf("services returned in order %v, want %v", got, tt.wantOrder)
			}
			// No goroutine left: every fake that started has returned.
			left := make(chan struct{})
			go func() { wg.Wait(); close(left) }()
			select {
			case <-left:
			case <-time.After(time.Second):
				t.Error("a service was still running after RunAll returned")
			}
		})
	}
}

func TestFuncService(t *testing.T) {
	s := service.Func("x", func(context.Context) error { return errors.New("boom") })
	if s.Name() != "x" || s.Run(t.Context()) == nil {
		t.Errorf("Func: Name %q, Run returned nil", s.Name())
	}
}
