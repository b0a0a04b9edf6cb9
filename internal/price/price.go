// Package price is the model of a quota's price, with Stripe's semantics
// of its models (per_unit, graduated, volume, package), the check of a
// price sent by a client (Parse), and the amount a usage costs under it.
// It reads no database and no clock.
//
// Invariant: an amount is computed with exact rational arithmetic
// (math/big) from decimal strings of at most 12 decimal places and an
// integer usage of any size, never through a float, and is rounded half up
// to cents once, by RoundCents (Cents writes it), at the end of a line
// (TestAmount, TestCents).
package price

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Model is how a price turns usage into an amount.
type Model string

// The models, as Stripe names them.
const (
	// PerUnit prices every unit at UnitAmount.
	PerUnit Model = "per_unit"
	// Graduated prices each tier's units at its unit amount, plus the
	// flat amount of every tier the usage reaches.
	Graduated Model = "graduated"
	// Volume prices all units at the unit amount of the tier the total
	// falls in, plus that tier's flat amount.
	Volume Model = "volume"
	// Package prices PackageSize units at PackageAmount, the number of
	// packages rounded up (or down) to a whole one.
	Package Model = "package"
)

// Models lists every model, in the order messages name them.
var Models = []Model{PerUnit, Graduated, Volume, Package}

// Rounding is how a package price counts a part of a package.
type Rounding string

// The roundings of a package price.
const (
	// Up bills a started package as a whole one (the default).
	Up Rounding = "up"
	// Down bills only whole packages.
	Down Rounding = "down"
)

// Limits of a price.
const (
	// MaxTiers is the most tiers a graduated or volume price may have.
	MaxTiers = 100
	// MaxDecimals is the most decimal places of an amount.
	MaxDecimals = 12
)

// decimalRE is an amount: a non-negative decimal of at most 12 integer
// digits and at most MaxDecimals decimal places.
var decimalRE = regexp.MustCompile(`^[0-9]{1,12}(\.[0-9]{1,12})?$`)

// ValidDecimal reports whether s is an amount a price may hold: a
// non-negative decimal string such as "0.002", with at most 12 digits
// before the point and MaxDecimals after it.
func ValidDecimal(s string) bool { return decimalRE.MatchString(s) }

// Tier is one tier of a graduated or volume price: the units up to and
// including UpTo (after the previous tier's), nil for every unit beyond
// the previous tier (the last tier).
type Tier struct {
	UpTo       *int64 `json:"up_to"`
	UnitAmount string `json:"unit_amount"`
	FlatAmount string `json:"flat_amount"`
}

// Price is a quota's price in its plan's currency. Its JSON holds the
// model and that model's fields only:
//
//	{"model":"per_unit","unit_amount":"0.002"}
//	{"model":"graduated","tiers":[{"up_to":1000,"unit_amount":"0","flat_amount":"0"},{"up_to":null,"unit_amount":"0.001","flat_amount":"5"}]}
//	{"model":"package","package_size":1000,"package_amount":"1.5","round":"up"}
//
// A Price from Parse is valid; amounts are decimal strings (ValidDecimal).
type Price struct {
	Model Model `json:"model"`
	// UnitAmount is the price of one unit (per_unit).
	UnitAmount string `json:"unit_amount,omitempty"`
	// Tiers (graduated, volume) have strictly increasing UpTo, the last nil.
	Tiers []Tier `json:"tiers,omitempty"`
	// PackageSize units (package, ≥ 1) cost PackageAmount.
	PackageSize   int64    `json:"package_size,omitempty"`
	PackageAmount string   `json:"package_amount,omitempty"`
	Round         Rounding `json:"round,omitempty"`
}

// PerUnitPrice is the per_unit price of unitAmount: what a quota's
// unit_price is shorthand for.
func PerUnitPrice(unitAmount string) Price {
	return Price{Model: PerUnit, UnitAmount: unitAmount}
}

// UnitPrice is p's price of one unit when p is per_unit, "" otherwise:
// the unit_price a quota shows.
func (p Price) UnitPrice() string {
	if p.Model == PerUnit {
		return p.UnitAmount
	}
	return ""
}

// Amount is the exact amount usage costs under p (units below zero count
// as none). It fails only for a Price that Parse would refuse. To price
// many usages, parse p's amounts once with Rates.
func (p Price) Amount(usage *big.Int) (*big.Rat, error) {
	r, err := p.Rates()
	if err != nil {
		return nil, err
	}
	return r.Amount(usage), nil
}

// Rates is a Price with its amounts parsed: what prices many usages.
type Rates struct {
	model Model
	unit  *big.Rat   // per_unit
	tiers []rateTier // graduated, volume
	size  *big.Int   // package
	pkg   *big.Rat   // package
	round Rounding
}

// rateTier is a Tier parsed; upTo nil on the last tier.
type rateTier struct {
	upTo       *big.Int
	unit, flat *big.Rat
}

// Rates parses p's amounts. It fails only for a Price that Parse would
// refuse.
func (p Price) Rates() (Rates, error) {
	r := Rates{model: p.Model, round: p.Round}
	var err error
	switch p.Model {
	case PerUnit:
		r.unit, err = decimal("unit_amount", p.UnitAmount)
	case Graduated, Volume:
		if len(p.Tiers) == 0 || p.Tiers[len(p.Tiers)-1].UpTo != nil {
			return Rates{}, fmt.Errorf("price: a %s price's last tier must hold every unit (up_to null)", p.Model)
		}
		r.tiers = make([]rateTier, len(p.Tiers))
		for i, t := range p.Tiers {
			if t.UpTo != nil {
				r.tiers[i].upTo = big.NewInt(*t.UpTo)
			}
			if r.tiers[i].unit, err = decimal(fmt.Sprintf("tiers[%d].unit_amount", i), t.UnitAmount); err != nil {
				return Rates{}, err
			}
			if r.tiers[i].flat, err = decimal(fmt.Sprintf("tiers[%d].flat_amount", i), t.FlatAmount); err != nil {
				return Rates{}, err
			}
		}
	case Package:
		if p.PackageSize < 1 {
			return Rates{}, fmt.Errorf("price: package_size %d is not a positive number of units", p.PackageSize)
		}
		r.size = big.NewInt(p.PackageSize)
		r.pkg, err = decimal("package_amount", p.PackageAmount)
	default:
		return Rates{}, fmt.Errorf("price: unknown model %q", p.Model)
	}
	if err != nil {
		return Rates{}, err
	}
	return r, nil
}

// Amount is the exact amount usage costs (units below zero count as
// none); a new value, which the caller may change.
func (r Rates) Amount(usage *big.Int) *big.Rat {
	units := new(big.Int)
	if usage != nil && usage.Sign() > 0 {
		units.Set(usage)
	}
	switch r.model {
	case PerUnit:
		return new(big.Rat).Mul(r.unit, new(big.Rat).SetInt(units))
	case Graduated:
		return r.graduated(units)
	case Volume:
		return r.volume(units)
	case Package:
		n, rest := new(big.Int).QuoRem(units, r.size, new(big.Int))
		if rest.Sign() > 0 && r.round != Down {
			n.Add(n, big.NewInt(1))
		}
		return new(big.Rat).Mul(r.pkg, new(big.Rat).SetInt(n))
	}
	return new(big.Rat) // the zero Rates prices nothing
}

// graduated: each tier's units at its unit amount, plus the flat amount of
// every tier reached. The first tier is always reached (at no usage too);
// a later one when the usage is above the previous tier's up_to.
func (r Rates) graduated(units *big.Int) *big.Rat {
	total := new(big.Rat)
	prev := new(big.Int)
	in := new(big.Int)
	for i, t := range r.tiers {
		if i > 0 && units.Cmp(prev) <= 0 {
			break
		}
		in.Set(units)
		if t.upTo != nil && units.Cmp(t.upTo) > 0 {
			in.Set(t.upTo)
		}
		in.Sub(in, prev)
		total.Add(total, new(big.Rat).Mul(t.unit, new(big.Rat).SetInt(in)))
		total.Add(total, t.flat)
		if t.upTo == nil {
			break
		}
		prev.Set(t.upTo)
	}
	return total
}

// volume: every unit at the unit amount of the first tier whose up_to is
// at or above the usage, plus that tier's flat amount.
func (r Rates) volume(units *big.Int) *big.Rat {
	for _, t := range r.tiers {
		if t.upTo != nil && units.Cmp(t.upTo) > 0 {
			continue
		}
		a := new(big.Rat).Mul(t.unit, new(big.Rat).SetInt(units))
		return a.Add(a, t.flat)
	}
	return new(big.Rat) // Rates checks that the last tier holds every unit
}

// decimal parses an amount; "" is 0.
func decimal(field, s string) (*big.Rat, error) {
	if s == "" {
		return new(big.Rat), nil
	}
	if !ValidDecimal(s) {
		return nil, fmt.Errorf("price: %s %q is not a decimal string", field, s)
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return nil, fmt.Errorf("price: %s %q is not a decimal string", field, s)
	}
	return r, nil
}

// RoundCents is r rounded half up (away from zero) to a whole cent.
func RoundCents(r *big.Rat) *big.Rat {
	scaled := new(big.Rat).Mul(r, big.NewRat(100, 1))
	if scaled.Sign() >= 0 {
		scaled.Add(scaled, big.NewRat(1, 2))
	} else {
		scaled.Sub(scaled, big.NewRat(1, 2))
	}
	n := new(big.Int).Quo(scaled.Num(), scaled.Denom()) // truncates toward zero
	return new(big.Rat).SetFrac(n, big.NewInt(100))
}

// Cents formats r rounded half up to two decimals ("2.47" for 2.465).
func Cents(r *big.Rat) string { return RoundCents(r).FloatString(2) }

// FieldError is what Parse refuses: the field, as JSON spells it under the
// price ("tiers[1].up_to"; "" for the price itself), and why.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + " " + e.Message
}

// fields are a price's JSON fields, in the order messages name them.
var fields = []string{"model", "unit_amount", "tiers", "package_size", "package_amount", "round"}

// modelFields are the fields each model takes besides model.
var modelFields = map[Model][]string{
	PerUnit:   {"unit_amount"},
	Graduated: {"tiers"},
	Volume:    {"tiers"},
	Package:   {"package_size", "package_amount", "round"},
}

// Parse reads a price a client sent, a JSON object, and checks it: a
// known model and exactly its fields (round optional, default up), amounts
// as decimal strings (ValidDecimal), tiers (1 to MaxTiers) with strictly
// increasing positive integer up_to and the last one null, a missing
// unit_amount or flat_amount of a tier being "0", and package_size a
// whole number ≥ 1. The first error is returned.
func Parse(raw json.RawMessage) (Price, *FieldError) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return Price{}, &FieldError{Message: `must be an object such as {"model":"per_unit","unit_amount":"0.002"}`}
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		if !slices.Contains(fields, k) {
			return Price{}, &FieldError{Field: truncate(k), Message: "is not a field of a price (" + strings.Join(fields, ", ") + ")"}
		}
	}
	var p Price
	if err := json.Unmarshal(obj["model"], &p.Model); err != nil || obj["model"] == nil || !slices.Contains(Models, p.Model) {
		return Price{}, &FieldError{Field: "model", Message: "must be one of " + modelList()}
	}
	for _, k := range fields[1:] {
		if _, ok := obj[k]; ok && !slices.Contains(modelFields[p.Model], k) {
			return Price{}, &FieldError{Field: k, Message: fmt.Sprintf("is not a field of a %s price (it takes %s)", p.Model, strings.Join(modelFields[p.Model], ", "))}
		}
	}
	switch p.Model {
	case PerUnit:
		s, err := amount("unit_amount", obj["unit_amount"], true)
		if err != nil {
			return Price{}, err
		}
		p.UnitAmount = s
	case Graduated, Volume:
		tiers, err := parseTiers(obj["tiers"])
		if err != nil {
			return Price{}, err
		}
		p.Tiers = tiers
	case Package:
		raw, ok := obj["package_size"]
		if !ok || string(raw) == "null" {
			return Price{}, &FieldError{Field: "package_size", Message: "is required: a whole number of units ≥ 1"}
		}
		size, ok := wholeNumber(raw)
		if !ok || size < 1 {
			return Price{}, &FieldError{Field: "package_size", Message: "must be a whole number of units ≥ 1, got " + truncate(string(raw))}
		}
		p.PackageSize = size
		s, ferr := amount("package_amount", obj["package_amount"], true)
		if ferr != nil {
			return Price{}, ferr
		}
		p.PackageAmount = s
		p.Round = Up
		if r, ok := obj["round"]; ok && string(r) != "null" {
			if err := json.Unmarshal(r, &p.Round); err != nil || (p.Round != Up && p.Round != Down) {
				return Price{}, &FieldError{Field: "round", Message: `must be "up" (the default) or "down"`}
			}
		}
	}
	return p, nil
}

// parseTiers reads and checks the tiers of a graduated or volume price.
func parseTiers(raw json.RawMessage) ([]Tier, *FieldError) {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil || raw == nil || len(items) == 0 {
		return nil, &FieldError{Field: "tiers", Message: `is required: a list of {"up_to", "unit_amount", "flat_amount"}, the last with "up_to": null`}
	}
	if len(items) > MaxTiers {
		return nil, &FieldError{Field: "tiers", Message: fmt.Sprintf("must hold at most %d tiers, got %d", MaxTiers, len(items))}
	}
	tiers := make([]Tier, len(items))
	for i, item := range items {
		field := func(f string) string { return fmt.Sprintf("tiers[%d]%s", i, f) }
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(item, &obj); err != nil || obj == nil {
			return nil, &FieldError{Field: field(""), Message: `must be an object {"up_to", "unit_amount", "flat_amount"}`}
		}
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			if k != "up_to" && k != "unit_amount" && k != "flat_amount" {
				return nil, &FieldError{Field: field("." + truncate(k)), Message: "is not a field of a tier (up_to, unit_amount, flat_amount)"}
			}
		}
		upTo, ok := obj["up_to"]
		last := i == len(items)-1
		switch {
		case !ok:
			return nil, &FieldError{Field: field(".up_to"), Message: "is required: the tier's last unit, or null on the last tier"}
		case string(upTo) == "null":
			if !last {
				return nil, &FieldError{Field: field(".up_to"), Message: "is null, which only the last tier may be"}
			}
		default:
			v, ok := wholeNumber(upTo)
			if !ok || v < 1 {
				return nil, &FieldError{Field: field(".up_to"), Message: "must be a whole number of units ≥ 1, or null on the last tier, got " + truncate(string(upTo))}
			}
			if last {
				return nil, &FieldError{Field: field(".up_to"), Message: "must be null: the last tier holds every unit beyond the previous one"}
			}
			if i > 0 && v <= *tiers[i-1].UpTo {
				return nil, &FieldError{Field: field(".up_to"), Message: fmt.Sprintf("must be above the previous tier's up_to (%d), got %d", *tiers[i-1].UpTo, v)}
			}
			tiers[i].UpTo = &v
		}
		var err *FieldError
		if tiers[i].UnitAmount, err = amount(field(".unit_amount"), obj["unit_amount"], false); err != nil {
			return nil, err
		}
		if tiers[i].FlatAmount, err = amount(field(".flat_amount"), obj["flat_amount"], false); err != nil {
			return nil, err
		}
	}
	return tiers, nil
}

// amount reads a decimal string; an absent or null one is "0" unless
// required.
func amount(field string, raw json.RawMessage, required bool) (string, *FieldError) {
	if raw == nil || string(raw) == "null" {
		if required {
			return "", &FieldError{Field: field, Message: `is required: a decimal string such as "0.002"`}
		}
		return "0", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil || !ValidDecimal(s) {
		return "", &FieldError{Field: field, Message: fmt.Sprintf(`must be a decimal string ≥ 0 with at most %d decimal places, such as "0.002", got %s`, MaxDecimals, truncate(string(raw)))}
	}
	return s, nil
}

func modelList() string {
	names := make([]string, len(Models))
	for i, m := range Models {
		names[i] = string(m)
	}
	return strings.Join(names, ", ")
}

// wholeNumber reads a JSON integer written without sign, fraction or
// exponent that fits an int64.
func wholeNumber(raw json.RawMessage) (int64, bool) {
	s := string(raw)
	if s == "" || len(s) > 19 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// truncate shortens a client's text for a message.
func truncate(s string) string {
	if len(s) > 40 {
		return strings.ToValidUTF8(s[:40], "?") + "..."
	}
	return s
}
