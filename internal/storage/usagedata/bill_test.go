package usagedata

import (
	"math/big"
	"testing"
)

func TestCents(t *testing.T) {
	tests := []struct {
		num, den int64
		want     string
	}{
		{0, 1, "0.00"},
		{1, 200, "0.01"},     // 0.005 rounds half up
		{1, 201, "0.00"},     // 0.004975...
		{2469, 1000, "2.47"}, // 2.469
		{123456789, 1, "123456789.00"},
	}
	for _, tt := range tests {
		if got := billCents(big.NewRat(tt.num, tt.den)); got != tt.want {
			t.Errorf("billCents(%d/%d) = %s, want %s", tt.num, tt.den, got, tt.want)
		}
	}
}
