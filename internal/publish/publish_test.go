package publish_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/publish"
)

// blockingWriter holds every Emit until release is closed.
type blockingWriter struct {
	started chan int
	release chan struct{}
}

func (w *blockingWriter) Emit(ctx context.Context, evs ...events.Event) error {
	w.started <- len(evs)
	select {
	case <-w.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestBoundedInFlight(t *testing.T) {
	w := &blockingWriter{started: make(chan int, 10), release: make(chan struct{})}
	p := publish.New(w, 10, time.Minute)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := p.Publish(context.Background(), make([]events.Event, 8)); err != nil {
			t.Errorf("first publish: %v", err)
		}
	})
	<-w.started
	// 8 in flight: 3 more would exceed 10, 2 fit.
	if err := p.Publish(context.Background(), make([]events.Event, 3)); !errors.Is(err, publish.ErrBusy) {
		t.Fatalf("over the bound: %v, want ErrBusy", err)
	}
	if err := p.Publish(context.Background(), make([]events.Event, 11)); !errors.Is(err, publish.ErrBusy) {
		t.Fatalf("larger than the bound: %v, want ErrBusy", err)
	}
	wg.Go(func() {
		if err := p.Publish(context.Background(), make([]events.Event, 2)); err != nil {
			t.Errorf("within the bound: %v", err)
		}
	})
	<-w.started
	close(w.release)
	wg.Wait()
	// All released: the full bound is available again.
	if err := p.Publish(context.Background(), make([]events.Event, 10)); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func TestTimeoutIsUnavailable(t *testing.T) {
	w := &blockingWriter{started: make(chan int, 1), release: make(chan struct{})}
	p := publish.New(w, 10, 20*time.Millisecond)
	err := p.Publish(context.Background(), make([]events.Event, 1))
	if !errors.Is(err, publish.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish = %v, want ErrUnavailable wrapping DeadlineExceeded", err)
	}
}
