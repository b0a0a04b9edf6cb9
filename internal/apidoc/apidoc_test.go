package apidoc_test

import (
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/metering/internal/apidoc"
	"github.com/usagemeter/metering/internal/biller"
	"github.com/usagemeter/metering/internal/ingest"
	"github.com/usagemeter/metering/internal/service"
)

// codeRoutes lists "METHOD /path" for every route the services serve.
func codeRoutes() []string {
	routes := slices.Clone(service.Routes)
	routes = append(routes, biller.Routes...)
	for _, r := range ingest.New(ingest.Options{}).Routes() {
		routes = append(routes, r.Method+" "+r.Path)
	}
	return routes
}

func TestEveryRouteIsDocumented(t *testing.T) {
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(apidoc.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}
	code := codeRoutes()
	for _, r := range code {
		method, path, _ := strings.Cut(r, " ")
		if _, ok := doc.Paths[path][strings.ToLower(method)]; !ok {
			t.Errorf("route %s is served but not documented in openapi.yaml", r)
		}
	}
	for path, ops := range doc.Paths {
		for method := range ops {
			if method == "parameters" {
				continue
			}
			r := strings.ToUpper(method) + " " + path
			if !slices.Contains(code, r) {
				t.Errorf("openapi.yaml documents %s, which no service serves", r)
			}
		}
	}
}
