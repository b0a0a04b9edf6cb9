package metering_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/testkit/kafkacluster"
)

// TestComposeMatchesTheCode checks docker-compose.yml against the code,
// since no Docker engine runs where the tests do: every service exists,
// listens on its contract port, sets only variables its binary reads, and
// waits for what it needs.
func TestComposeMatchesTheCode(t *testing.T) {
	raw, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]struct {
			Image       string         `yaml:"image"`
			Build       any            `yaml:"build"`
			Command     []string       `yaml:"command"`
			Environment map[string]any `yaml:"environment"`
			Ports       []string       `yaml:"ports"`
			DependsOn   map[string]any `yaml:"depends_on"`
			Healthcheck map[string]any `yaml:"healthcheck"`
			Extra       map[string]any `yaml:",inline"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	infra := map[string]string{"postgres": "postgres:15", "kafka": "apache/kafka:" + kafkacluster.DefaultVersion, "stripe-mock": "stripe/stripe-mock:v0.190.0"}
	for name, image := range infra {
		s, ok := doc.Services[name]
		// The compose Kafka is the release the real-Kafka suite tests.
		if !ok || !strings.HasPrefix(s.Image, image) || (name == "kafka" && s.Image != image) {
			t.Errorf("service %s: image %q, want %s", name, s.Image, image)
		}
	}
	ports := map[string]string{"ingest": "8080", "aggregator": "8081", "biller": "8082"}
	dockerfile, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for name, port := range ports {
		s, ok := doc.Services[name]
		if !ok {
			t.Errorf("no service %s", name)
			continue
		}
		if s.Build == nil || len(s.Command) != 1 || !strings.HasSuffix(s.Command[0], "/"+name) {
			t.Errorf("%s: must be built from the Dockerfile and run /usr/local/bin/%s, got build %v command %v", name, name, s.Build, s.Command)
		}
		if !strings.Contains(string(dockerfile), "./cmd/"+name) {
			t.Errorf("the Dockerfile does not build cmd/%s", name)
		}
		if !slices.Contains(s.Ports, port+":"+port) {
			t.Errorf("%s: ports %v, want %s:%s", name, s.Ports, port, port)
		}
		known := config.Variables(name)
		for _, must := range []string{"DATABASE_URL", "KAFKA_BROKERS", "HTTP_ADDR"} {
			if _, ok := s.Environment[must]; !ok {
				t.Errorf("%s does not set %s", name, must)
			}
		}
		for k := range s.Environment {
			if k == "<<" {
				continue
			}
			if !slices.Contains(known, k) {
				t.Errorf("%s sets %s, which the binary does not read (it reads %v)", name, k, known)
			}
		}
		if addr, _ := s.Environment["HTTP_ADDR"].(string); addr != ":"+port {
			t.Errorf("%s: HTTP_ADDR %q, want :%s", name, addr, port)
		}
		for _, dep := range []string{"postgres", "kafka"} {
			if _, ok := s.DependsOn[dep]; !ok {
				t.Errorf("%s does not wait for %s", name, dep)
			}
		}
	}
	if _, ok := doc.Services["biller"].DependsOn["stripe-mock"]; !ok {
		t.Error("the biller does not wait for stripe-mock")
	}
	if base, _ := doc.Services["biller"].Environment["STRIPE_API_BASE"].(string); !strings.Contains(base, "stripe-mock:12111") {
		t.Errorf("the biller's STRIPE_API_BASE %q does not point at stripe-mock", base)
	}
	// The anchor's variables reach every service.
	if !strings.Contains(string(raw), "<<: *service-env") {
		t.Error("the shared environment anchor is not used")
	}
}
