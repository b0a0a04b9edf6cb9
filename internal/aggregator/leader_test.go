package aggregator_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// leaderSample reads metering_leader{loop="retention"} from the aggregator
// at addr: "1", "0", or "" when absent.
func leaderSample(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), `metering_leader{loop="retention"} `); ok {
			return v
		}
	}
	return ""
}

func TestRetentionRunsOnOneElectedReplica(t *testing.T) {
	s := newStack(t)
	stopFirst := s.start(s.config())
	first := s.addr
	s.start(s.config())
	second := s.addr

	both := func() string { return leaderSample(t, first) + leaderSample(t, second) }
	deadline := time.Now().Add(15 * time.Second)
	for both() != "10" && both() != "01" {
		if time.Now().After(deadline) {
			t.Fatalf("metering_leader{loop=\"retention\"} of the two replicas = %q, want one 1 and one 0", both())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if leaderSample(t, first) != "1" {
		return // the second replica leads; what follows checks a handover from the first
	}
	// The leader stops: the other replica takes retention over.
	stopFirst()
	for leaderSample(t, second) != "1" {
		if time.Now().After(deadline) {
			t.Fatal("the remaining replica did not take retention over")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
