package usagedata

import (
	"errors"
	"math"
	"slices"
	"testing"
)

// A pack decodes to the windows encoded, in order.
func TestPackRoundTrip(t *testing.T) {
	t.Parallel()
	for _, ws := range [][]packedWindow{
		nil,
		{{0, 0, 0}},
		{{0, 5, 1}, {3600, -7, 2}, {86399, math.MaxInt64, math.MaxInt64}},
		{{7200, math.MinInt64, 0}},
	} {
		p := []byte{hourPackVersion}
		for _, w := range ws {
			p = appendPackedWindow(p, w.offset, w.value, w.events)
		}
		got, err := decodePack(nil, p)
		if err != nil || !slices.Equal(got, ws) {
			t.Errorf("%v: got %v, %v", ws, got, err)
		}
	}
}

// Packs that appendPackedWindow cannot write are refused.
func TestPackRefusesMalformed(t *testing.T) {
	t.Parallel()
	enc := func(ws ...packedWindow) []byte {
		p := []byte{hourPackVersion}
		for _, w := range ws {
			p = appendPackedWindow(p, w.offset, w.value, w.events)
		}
		return p
	}
	for name, p := range map[string][]byte{
		"empty":          {},
		"version":        {2},
		"out of order":   enc(packedWindow{3600, 1, 1}, packedWindow{0, 1, 1}),
		"twice":          enc(packedWindow{3600, 1, 1}, packedWindow{3600, 1, 1}),
		"past the day":   enc(packedWindow{86400, 1, 1}),
		"negative count": enc(packedWindow{0, 1, -1}),
		"cut short":      enc(packedWindow{0, 1 << 40, 1})[:4],
	} {
		if _, err := decodePack(nil, p); !errors.Is(err, errBadPack) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzDecodePack: whatever the bytes, decodePack refuses them or returns
// windows that encode back to exactly those bytes.
func FuzzDecodePack(f *testing.F) {
	f.Add([]byte{hourPackVersion})
	f.Add(appendPackedWindow(appendPackedWindow([]byte{hourPackVersion}, 0, 5, 1), 3600, -9, 3))
	f.Add([]byte{hourPackVersion, 0x80})
	f.Fuzz(func(t *testing.T, p []byte) {
		ws, err := decodePack(nil, p)
		if err != nil {
			if !errors.Is(err, errBadPack) {
				t.Fatalf("an error that is not errBadPack: %v", err)
			}
			return
		}
		back := []byte{hourPackVersion}
		for _, w := range ws {
			back = appendPackedWindow(back, w.offset, w.value, w.events)
		}
		if !slices.Equal(back, p) {
			t.Fatalf("%x decodes to %v, which encodes to %x", p, ws, back)
		}
	})
}
