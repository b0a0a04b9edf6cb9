package meter_test

import (
	"strings"
	"testing"

	"github.com/usagemeter/metering/internal/meter"
)

func TestEventNamePlaceholders(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		tmpl, want, err string
	}{
		{"tokens", "", ""},
		{"tokens_{model}", "model", ""},
		{"{region}.{model}:{region}", "region,model", ""},
		{"", "", "not empty"},
		{"tokens_{model", "", "no closing }"},
		{"tokens_{}", "", "must name one property"},
		{"tokens_{a{b}", "", "must name one property"},
		{"tokens}", "", "may hold only"},
		{"tok ens", "", "may hold only"},
	} {
		got, err := meter.EventNamePlaceholders(tc.tmpl)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("EventNamePlaceholders(%q) = %v, %v; want an error with %q", tc.tmpl, got, err, tc.err)
			}
			continue
		}
		if err != nil || strings.Join(got, ",") != tc.want {
			t.Errorf("EventNamePlaceholders(%q) = %v, %v; want %s", tc.tmpl, got, err, tc.want)
		}
	}
}

func TestGroupEventName(t *testing.T) {
	t.Parallel()
	groupBy := []string{"region", "model"}
	for _, tc := range []struct {
		key, tmpl, want, err string
	}{
		{`["eu","gpt-4"]`, "tokens_{model}_{region}", "tokens_gpt-4_eu", ""},
		{`["eu","gpt-4"]`, "{model}.{model}", "gpt-4.gpt-4", ""},
		{`["eu","gpt-4"]`, "flat", "flat", ""},
		{`["eu",null]`, "tokens_{model}", "", "has no value"},
		{`["eu","a b"]`, "tokens_{model}", "", "cannot hold"},
		{`["eu","é"]`, "tokens_{model}", "", "cannot hold"},
		{`["eu","gpt"]`, "tokens_{tier}", "", "does not group by"},
		{`["eu","` + strings.Repeat("x", 95) + `"]`, "tokens_{model}", "", "longer than 100"},
		{`["eu","` + strings.Repeat("x", 93) + `"]`, "tokens_{model}", "tokens_" + strings.Repeat("x", 93), ""},
	} {
		g, err := meter.ParseGroupKey(groupBy, tc.key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := g.EventName(tc.tmpl)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("EventName(%s, %q) = %q, %v; want an error with %q", tc.key, tc.tmpl, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("EventName(%s, %q) = %q, %v; want %q", tc.key, tc.tmpl, got, err, tc.want)
		}
	}
}
