package stripesync

import (
	"math/big"
	"strings"
	"testing"
)

func TestHoldReason(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, factor, delta string
		history             []string
		held                bool
		baseline            string
	}{
		{"no history", "10", "1000000", nil, false, ""},
		{"at k times the median", "10", "1000", []string{"100"}, false, ""},
		{"beyond it", "10", "1001", []string{"100"}, true, "baseline 100 "},
		{"odd count: the middle one", "2", "61", []string{"1", "30", "900"}, true, "baseline 30 "},
		{"even count: the two middles' mean", "2", "51", []string{"10", "40", "15", "1"}, true, "baseline 12.5 "},
		{"even count, at the bound", "2", "25", []string{"10", "15"}, false, ""},
		{"decimal factor", "1.5", "16", []string{"10"}, true, "1.5 × "},
		{"past int64", "10", "200000000000000000000", []string{"10000000000000000000"}, true, "baseline 10000000000000000000 "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, err := parseHold([]byte(`{"factor":` + tc.factor + `}`))
			if err != nil {
				t.Fatal(err)
			}
			d, _ := new(big.Int).SetString(tc.delta, 10)
			reason, err := h.holdReason(d, tc.history)
			if err != nil || (reason != "") != tc.held || !strings.Contains(reason, tc.baseline) {
				t.Fatalf("holdReason = %q, %v; want held %v with %q", reason, err, tc.held, tc.baseline)
			}
		})
	}
}

func TestParseHold(t *testing.T) {
	t.Parallel()
	for raw, ok := range map[string]bool{
		``: true, `null`: true, `{"factor": 10}`: true, `{"factor": "2.5", "window": 5}`: true,
		`{"factor": 0}`: false, `{"factor": -1}`: false, `{}`: false, `{"factor": 10, "window": -1}`: false, `[1]`: false,
	} {
		if err := CheckHoldOnAnomaly([]byte(raw)); (err == nil) != ok {
			t.Errorf("CheckHoldOnAnomaly(%s) = %v, want ok %v", raw, err, ok)
		}
	}
	h, _ := parseHold([]byte(`{"factor": 3}`))
	if h.window != DefaultHoldWindow {
		t.Errorf("default window %d", h.window)
	}
}
