package usagedata

import (
	"fmt"
	"math"
	"math/big"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// numericInt64 reads what the type map reads (through NumericInt) for
// every integer that fits an int64, and declines the rest.
func TestNumericInt64(t *testing.T) {
	t.Parallel()
	m := pgtype.NewMap()
	mustBig := func(s string) *big.Int {
		v, ok := new(big.Int).SetString(s, 10)
		if !ok {
			t.Fatalf("bad number %s", s)
		}
		return v
	}
	tests := []struct {
		n      pgtype.Numeric
		wantOK bool
	}{
		{pgtype.Numeric{Int: big.NewInt(0), Valid: true}, true},
		{pgtype.Numeric{Int: big.NewInt(1), Valid: true}, true},
		{pgtype.Numeric{Int: big.NewInt(9999), Valid: true}, true},
		{pgtype.Numeric{Int: big.NewInt(10000), Valid: true}, true},
		{pgtype.Numeric{Int: big.NewInt(276396), Valid: true}, true},
		{pgtype.Numeric{Int: big.NewInt(1 << 53), Valid: true}, true},
		{pgtype.Numeric{Int: big.NewInt(-42), Valid: true}, true},
		{pgtype.Numeric{Int: big.NewInt(7), Exp: 4, Valid: true}, true}, // 70000: trailing zero digits
		{pgtype.Numeric{Int: big.NewInt(math.MaxInt64), Valid: true}, true},
		{pgtype.Numeric{Int: big.NewInt(math.MinInt64), Valid: true}, true},
		{pgtype.Numeric{Int: mustBig("9223372036854775808"), Valid: true}, false},
		{pgtype.Numeric{Int: mustBig("-9223372036854775809"), Valid: true}, false},
		{pgtype.Numeric{Int: mustBig("18446744073709551616"), Valid: true}, false},
		{pgtype.Numeric{Int: mustBig("100000000000000000000000"), Valid: true}, false},
		{pgtype.Numeric{Int: big.NewInt(15), Exp: -1, Valid: true}, false}, // 1.5: a fraction, cut the slow way
		{pgtype.Numeric{NaN: true, Valid: true}, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v", tt.n), func(t *testing.T) {
			t.Parallel()
			b, err := m.Encode(pgtype.NumericOID, pgx.BinaryFormatCode, tt.n, nil)
			if err != nil {
				t.Fatal(err)
			}
			var back pgtype.Numeric
			if err := m.Scan(pgtype.NumericOID, pgx.BinaryFormatCode, b, &back); err != nil {
				t.Fatal(err)
			}
			want := NumericInt(back)
			got, ok := numericInt64(b)
			if ok != tt.wantOK || ok && big.NewInt(got).Cmp(want) != 0 {
				t.Fatalf("numericInt64 = %d, %v; want %s, %v", got, ok, want, tt.wantOK)
			}
			// The decoder as a whole reads what NumericInt reads, fast or not.
			d := rowDecoder{m: m, fds: []pgconn.FieldDescription{{Name: "v", DataTypeOID: pgtype.NumericOID, Format: pgx.BinaryFormatCode}}}
			a, err := d.amount([][]byte{b}, 0)
			if err != nil || a.bigInt().Cmp(want) != 0 {
				t.Fatalf("amount = %v, %v; want %s", a.bigInt(), err, want)
			}
		})
	}
	for _, b := range [][]byte{nil, {0}, {0, 1, 0, 0, 0, 0, 0, 0}, {0, 1, 0, 0, 0xC0, 0, 0, 0, 0, 1}, {0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10}} {
		if n, ok := numericInt64(b); ok {
			t.Errorf("numericInt64(%x) = %d, want refused", b, n)
		}
	}
}

// amount adds and compares as big integers do, turning to them when an
// int64 overflows.
func TestAmount(t *testing.T) {
	t.Parallel()
	huge, _ := new(big.Int).SetString("100000000000000000000", 10)
	vals := []amount{{n: 0}, {n: 1}, {n: -1}, {n: math.MaxInt64}, {n: math.MinInt64}, {n: math.MaxInt64 - 5}, {big: huge}, {big: new(big.Int).Neg(huge)}, {big: big.NewInt(3)}}
	for _, a := range vals {
		for _, b := range vals {
			want := new(big.Int).Add(a.bigInt(), b.bigInt())
			x := amount{}
			x.set(a)
			x.add(b)
			if x.bigInt().Cmp(want) != 0 {
				t.Errorf("%s + %s = %s, want %s", a.bigInt(), b.bigInt(), x.bigInt(), want)
			}
			if a.big != nil && x.big == a.big {
				t.Errorf("%s + %s shares the first's big integer", a.bigInt(), b.bigInt())
			}
			if got, want := a.cmp(b), a.bigInt().Cmp(b.bigInt()); got != want {
				t.Errorf("cmp(%s, %s) = %d, want %d", a.bigInt(), b.bigInt(), got, want)
			}
			s := newIntSlab(1)
			if got := s.int(a); got.Cmp(a.bigInt()) != 0 {
				t.Errorf("slab int(%s) = %s", a.bigInt(), got)
			}
		}
	}
	// A slab's integers are independent: growing one leaves the next.
	s := newIntSlab(2)
	x, y := s.int(amount{n: 5}), s.int(amount{n: 6})
	x.Lsh(x, 200)
	if y.Int64() != 6 || x.Cmp(new(big.Int).Lsh(big.NewInt(5), 200)) != 0 {
		t.Fatalf("x = %s, y = %s", x, y)
	}
}
