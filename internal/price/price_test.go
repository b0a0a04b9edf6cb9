package price_test

import (
	"encoding/json"
	"math/big"
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/price"
)

func mustParse(t *testing.T, s string) price.Price {
	t.Helper()
	p, err := price.Parse(json.RawMessage(s))
	if err != nil {
		t.Fatalf("Parse(%s): %v", s, err)
	}
	return p
}

func units(s string) *big.Int {
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		panic(s)
	}
	return n
}

// TestAmount: each model's amount of a usage, exact, at the tiers'
// boundaries, at no usage and beyond int64.
func TestAmount(t *testing.T) {
	t.Parallel()
	const (
		perUnit = `{"model":"per_unit","unit_amount":"0.000000000001"}`
		// 0-1000 free, with a 5 fee; 1001-10000 at 0.01; beyond at 0.005 with a 20 fee.
		tiers = `[{"up_to":1000,"unit_amount":"0","flat_amount":"5"},{"up_to":10000,"unit_amount":"0.01"},{"up_to":null,"unit_amount":"0.005","flat_amount":"20"}]`
		pkg   = `{"model":"package","package_size":1000,"package_amount":"2.5"}`
		down  = `{"model":"package","package_size":1000,"package_amount":"2.5","round":"down"}`
	)
	graduated := `{"model":"graduated","tiers":` + tiers + `}`
	volume := `{"model":"volume","tiers":` + tiers + `}`
	huge := "123456789012345678901234567890" // beyond int64
	tests := []struct {
		name, price, usage, want string // the exact amount, or byHand
	}{
		{"per unit, none", perUnit, "0", "0"},
		{"per unit, a picocent", perUnit, "1", "0.000000000001"},
		{"per unit, beyond int64", perUnit, huge, "123456789012345678.90123456789"},
		{"graduated, none: the first tier's fee", graduated, "0", "5"},
		{"graduated, inside the first tier", graduated, "999", "5"},
		{"graduated, exactly at up_to: not the next tier", graduated, "1000", "5"},
		{"graduated, one unit into the second tier", graduated, "1001", "5.01"},
		{"graduated, exactly at the second up_to", graduated, "10000", "95"},
		{"graduated, into the last tier: its fee", graduated, "10001", "115.005"}, // 5 + 90 + 20 + 0.005
		{"graduated, beyond int64", graduated, huge, byHand},
		{"volume, none: the first tier", volume, "0", "5"},
		{"volume, exactly at up_to", volume, "1000", "5"},
		{"volume, one above: every unit at the second tier's price", volume, "1001", "10.01"},
		{"volume, at the second up_to", volume, "10000", "100"},
		{"volume, the last tier", volume, "10001", "70.005"}, // 10001 × 0.005 + 20
		{"package, none", pkg, "0", "0"},
		{"package, one unit: a whole package", pkg, "1", "2.5"},
		{"package, exactly one", pkg, "1000", "2.5"},
		{"package, a started second", pkg, "1001", "5"},
		{"package down, a started second", down, "1999", "2.5"},
		{"package down, under one", down, "999", "0"},
		{"package, beyond int64", pkg, huge, byHand},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := mustParse(t, tt.price)
			got, err := p.Amount(units(tt.usage))
			if err != nil {
				t.Fatal(err)
			}
			want := expect(t, tt.price, tt.usage, tt.want)
			if got.Cmp(want) != 0 {
				t.Errorf("Amount(%s) = %s, want %s", tt.usage, got.RatString(), want.RatString())
			}
		})
	}
}

// byHand marks a case whose amount expect works out.
const byHand = "by hand"

// expect is the wanted amount: the table's, or, for the cases beyond
// int64 marked byHand, worked out from the price's definition.
func expect(t *testing.T, priceJSON, usage, want string) *big.Rat {
	t.Helper()
	if want != byHand {
		r, ok := new(big.Rat).SetString(want)
		if !ok {
			t.Fatalf("bad want %q", want)
		}
		return r
	}
	u := new(big.Rat).SetInt(units(usage))
	switch {
	case strings.Contains(priceJSON, `"graduated"`):
		// 5 + 9000 × 0.01 + 20 + (u - 10000) × 0.005
		r := new(big.Rat).Sub(u, big.NewRat(10000, 1))
		r.Mul(r, big.NewRat(5, 1000))
		return r.Add(r, big.NewRat(115, 1))
	case strings.Contains(priceJSON, `"package"`):
		// ceil(u / 1000) × 2.5: u ends in 890, so one started package.
		n := new(big.Int).Quo(units(usage), big.NewInt(1000))
		n.Add(n, big.NewInt(1))
		return new(big.Rat).Mul(new(big.Rat).SetInt(n), big.NewRat(5, 2))
	}
	t.Fatalf("no hand-worked amount for %s", priceJSON)
	return nil
}

func TestCents(t *testing.T) {
	t.Parallel()
	tests := []struct {
		r    *big.Rat
		want string
	}{
		{big.NewRat(0, 1), "0.00"},
		{big.NewRat(1, 200), "0.01"},     // 0.005 rounds half up
		{big.NewRat(1, 201), "0.00"},     // 0.004975...
		{big.NewRat(2469, 1000), "2.47"}, // 2.469
		{big.NewRat(2465, 1000), "2.47"}, // half up
		{big.NewRat(2464999, 1000000), "2.46"},
		{big.NewRat(123456789, 1), "123456789.00"},
		{new(big.Rat).SetFrac(units("123456789012345678901234567890"), big.NewInt(1000)), "123456789012345678901234567.89"},
	}
	for _, tt := range tests {
		if got := price.Cents(tt.r); got != tt.want {
			t.Errorf("Cents(%s) = %s, want %s", tt.r.RatString(), got, tt.want)
		}
	}
}

// TestParseRefuses: every malformed price is refused with its field named.
func TestParseRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, price, field, msg string }{
		{"not an object", `"0.1"`, "", "must be an object"},
		{"null", `null`, "", "must be an object"},
		{"no model", `{"unit_amount":"1"}`, "model", "must be one of per_unit, graduated, volume, package"},
		{"unknown model", `{"model":"tiered"}`, "model", "must be one of"},
		{"unknown field", `{"model":"per_unit","unit_amount":"1","currency":"usd"}`, "currency", "is not a field of a price"},
		{"a field of another model", `{"model":"per_unit","unit_amount":"1","tiers":[]}`, "tiers", "is not a field of a per_unit price"},
		{"per unit without amount", `{"model":"per_unit"}`, "unit_amount", "is required"},
		{"a number, not a string", `{"model":"per_unit","unit_amount":0.1}`, "unit_amount", "must be a decimal string"},
		{"negative", `{"model":"per_unit","unit_amount":"-1"}`, "unit_amount", "must be a decimal string ≥ 0"},
		{"13 decimals", `{"model":"per_unit","unit_amount":"0.0000000000001"}`, "unit_amount", "at most 12 decimal places"},
		{"an exponent", `{"model":"per_unit","unit_amount":"1e3"}`, "unit_amount", "must be a decimal string"},
		{"a fraction", `{"model":"per_unit","unit_amount":"1/3"}`, "unit_amount", "must be a decimal string"},
		{"no tiers", `{"model":"graduated"}`, "tiers", "is required"},
		{"empty tiers", `{"model":"volume","tiers":[]}`, "tiers", "is required"},
		{"last up_to not null", `{"model":"graduated","tiers":[{"up_to":10,"unit_amount":"1"}]}`, "tiers[0].up_to", "must be null"},
		{"null before the last", `{"model":"graduated","tiers":[{"up_to":null,"unit_amount":"1"},{"up_to":null}]}`, "tiers[0].up_to", "only the last tier"},
		{"up_to missing", `{"model":"graduated","tiers":[{"unit_amount":"1"}]}`, "tiers[0].up_to", "is required"},
		{"up_to not increasing", `{"model":"graduated","tiers":[{"up_to":10},{"up_to":10},{"up_to":null}]}`, "tiers[1].up_to", "must be above the previous tier's up_to (10), got 10"},
		{"up_to decreasing", `{"model":"volume","tiers":[{"up_to":10},{"up_to":5},{"up_to":null}]}`, "tiers[1].up_to", "must be above"},
		{"up_to zero", `{"model":"graduated","tiers":[{"up_to":0},{"up_to":null}]}`, "tiers[0].up_to", "≥ 1"},
		{"up_to a fraction", `{"model":"graduated","tiers":[{"up_to":1.5},{"up_to":null}]}`, "tiers[0].up_to", "whole number"},
		{"up_to a string", `{"model":"graduated","tiers":[{"up_to":"5"},{"up_to":null}]}`, "tiers[0].up_to", "whole number"},
		{"up_to beyond int64", `{"model":"graduated","tiers":[{"up_to":99999999999999999999},{"up_to":null}]}`, "tiers[0].up_to", "whole number"},
		{"a tier's unknown field", `{"model":"graduated","tiers":[{"up_to":null,"price":"1"}]}`, "tiers[0].price", "is not a field of a tier"},
		{"a tier's bad amount", `{"model":"graduated","tiers":[{"up_to":null,"flat_amount":"x"}]}`, "tiers[0].flat_amount", "must be a decimal string"},
		{"a tier not an object", `{"model":"graduated","tiers":[5]}`, "tiers[0]", "must be an object"},
		{"package without size", `{"model":"package","package_amount":"1"}`, "package_size", "is required"},
		{"package size zero", `{"model":"package","package_size":0,"package_amount":"1"}`, "package_size", "≥ 1"},
		{"package without amount", `{"model":"package","package_size":10}`, "package_amount", "is required"},
		{"package bad round", `{"model":"package","package_size":10,"package_amount":"1","round":"nearest"}`, "round", `"up" (the default) or "down"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := price.Parse(json.RawMessage(tt.price))
			if err == nil || err.Field != tt.field || !strings.Contains(err.Message, tt.msg) {
				t.Fatalf("Parse(%s) = %v, want field %q saying %q", tt.price, err, tt.field, tt.msg)
			}
		})
	}
}

// TestParseNormalises: a parsed price is written with its model's fields
// only, a tier's missing amount as "0", a package's rounding explicit.
func TestParseNormalises(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{`{"model":"per_unit","unit_amount":"0.0020"}`, `{"model":"per_unit","unit_amount":"0.0020"}`},
		{`{"model":"graduated","tiers":[{"up_to":5,"unit_amount":"1"},{"up_to":null,"flat_amount":"2"}]}`,
			`{"model":"graduated","tiers":[{"up_to":5,"unit_amount":"1","flat_amount":"0"},{"up_to":null,"unit_amount":"0","flat_amount":"2"}]}`},
		{`{"model":"package","package_size":100,"package_amount":"1.5"}`, `{"model":"package","package_size":100,"package_amount":"1.5","round":"up"}`},
		{`{"model":"package","package_size":100,"package_amount":"1.5","round":null}`, `{"model":"package","package_size":100,"package_amount":"1.5","round":"up"}`},
	}
	for _, tt := range tests {
		p := mustParse(t, tt.in)
		got, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tt.want {
			t.Errorf("Parse(%s) written as %s, want %s", tt.in, got, tt.want)
		}
		again := mustParse(t, string(got))
		if g2, _ := json.Marshal(again); string(g2) != string(got) {
			t.Errorf("%s parsed again is %s", got, g2)
		}
	}
	if got := price.PerUnitPrice("0.5").UnitPrice(); got != "0.5" {
		t.Errorf("a per_unit price's UnitPrice is %q", got)
	}
	if got := mustParse(t, `{"model":"volume","tiers":[{"up_to":null}]}`).UnitPrice(); got != "" {
		t.Errorf("a volume price's UnitPrice is %q", got)
	}
}

// TestRatesReuse: one Rates prices many usages as Amount does each, and
// the amounts it returns are the caller's to change (they share nothing
// with the parsed rates).
func TestRatesReuse(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		`{"model":"per_unit","unit_amount":"0.25"}`,
		`{"model":"graduated","tiers":[{"up_to":10,"unit_amount":"1","flat_amount":"3"},{"up_to":null,"unit_amount":"0.5","flat_amount":"7"}]}`,
		`{"model":"volume","tiers":[{"up_to":10,"unit_amount":"1","flat_amount":"3"},{"up_to":null,"unit_amount":"0.5","flat_amount":"7"}]}`,
		`{"model":"package","package_size":3,"package_amount":"2"}`,
	} {
		p := mustParse(t, s)
		rates, err := p.Rates()
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []int64{0, 1, 9, 10, 11, 100, 0, 10} {
			got := rates.Amount(big.NewInt(u))
			want, err := p.Amount(big.NewInt(u))
			if err != nil {
				t.Fatal(err)
			}
			if got.Cmp(want) != 0 {
				t.Errorf("%s: Rates.Amount(%d) = %s, Amount = %s", s, u, got.RatString(), want.RatString())
			}
			got.Add(got, big.NewRat(1000, 1)) // must not change the rates
		}
	}
}

// TestRatesRefuses: a Price that Parse would refuse has no rates.
func TestRatesRefuses(t *testing.T) {
	t.Parallel()
	upTo := int64(10)
	for name, p := range map[string]price.Price{
		"unknown model":     {Model: "tiered"},
		"no tiers":          {Model: price.Graduated},
		"last tier bounded": {Model: price.Volume, Tiers: []price.Tier{{UpTo: &upTo, UnitAmount: "1"}}},
		"bad amount":        {Model: price.PerUnit, UnitAmount: "1e3"},
		"bad tier amount":   {Model: price.Graduated, Tiers: []price.Tier{{FlatAmount: "-1"}}},
		"no package size":   {Model: price.Package, PackageAmount: "1"},
	} {
		if _, err := p.Rates(); err == nil {
			t.Errorf("%s: Rates of %+v did not fail", name, p)
		}
		if _, err := p.Amount(big.NewInt(1)); err == nil {
			t.Errorf("%s: Amount of %+v did not fail", name, p)
		}
	}
	if got := (price.Rates{}).Amount(big.NewInt(5)); got.Sign() != 0 {
		t.Errorf("the zero Rates price 5 units at %s", got.RatString())
	}
}
