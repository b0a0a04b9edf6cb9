package meter_test

import (
	"fmt"
	"time"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/meter"
)

// A meter of EU tokens per model and region: an event matches it, falls in
// the group of its model (its region property is missing, so null), and
// adds its value.
func Example() {
	d := meter.Definition{
		Name: "eu_tokens_by_model", Metric: "tokens", Aggregation: meter.Sum,
		GroupBy: []string{"model", "region"}, Filter: map[string]string{"zone": "eu"},
		Description: "Tokens used in the EU, per model",
	}
	fmt.Println("errors:", len(d.Validate()))
	def, _ := d.MarshalJSON()
	fmt.Println(string(def))

	e := events.Event{
		ID: "a1", Tenant: "acme", Metric: "tokens", Value: 1500,
		Time:       time.Date(2026, 11, 21, 19, 0, 0, 0, time.UTC),
		Properties: map[string]string{"model": "gpt-4", "zone": "eu"},
	}
	fmt.Println("matches:", d.Matches(e))
	g := d.Group(e)
	group, _ := g.MarshalJSON()
	fmt.Println("group:", string(group))
	fmt.Println("key:", g.Key())
	fmt.Println("adds:", d.Contribution(e).Value)
	fmt.Printf("implicit meter's key: %q\n", meter.Implicit("tokens").Group(e).Key())
	// Output:
	// errors: 0
	// {"name":"eu_tokens_by_model","metric":"tokens","aggregation":"sum","group_by":["model","region"],"filter":{"zone":"eu"},"property":null,"description":"Tokens used in the EU, per model"}
	// matches: true
	// group: {"model":"gpt-4","region":null}
	// key: ["gpt-4",null]
	// adds: 1500
	// implicit meter's key: ""
}
