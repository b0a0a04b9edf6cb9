package kafkalog_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// kafkaImporters are the product's files and packages that may import
// kafka-go: this package, the security settings, and the public SDK's
// producer.
var kafkaImporters = []string{"internal/kafkalog/", "internal/kafkaauth/", "events/producer.go"}

// TestKafkaStaysBehindKafkalog: no other product file imports kafka-go.
// Tests, internal/testkit and tools/ are not product.
func TestKafkaStaysBehindKafkalog(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules" ||
				rel == "internal/testkit" || rel == "tools" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			if p != "github.com/segmentio/kafka-go" && !strings.HasPrefix(p, "github.com/segmentio/kafka-go/") {
				continue
			}
			found = append(found, rel)
			allowed := slices.ContainsFunc(kafkaImporters, func(a string) bool {
				return rel == a || strings.HasSuffix(a, "/") && strings.HasPrefix(rel, a)
			})
			if !allowed {
				t.Errorf("%s imports %s: speak in record.Record and go through internal/kafkalog", rel, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(found, "internal/kafkalog/reader.go") {
		t.Fatalf("the scan did not see internal/kafkalog/reader.go import kafka-go (found %v): it is looking in the wrong place", found)
	}
}
