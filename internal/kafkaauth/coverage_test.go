package kafkaauth_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// notProduct are the directories whose Kafka clients are test harnesses
// or tools for the local stack, which talk to plaintext test brokers.
var notProduct = []string{"internal/testkit", "tools"}

// takenByCaller are constructions whose security the caller sets: the
// public SDK takes ProducerConfig.Transport, and relay.NewWriter's
// callers set the writer's Transport.
var takenByCaller = map[string]bool{"events/producer.go": true, "internal/relay/relay.go": true}

// TestEveryKafkaClientTakesTheSecurity: every kafka-go client the product
// builds names its Dialer or Transport, so KAFKA_TLS* and KAFKA_SASL_*
// reach it; none falls back to kafka-go's plaintext defaults.
func TestEveryKafkaClientTakesTheSecurity(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	needs := map[string]string{"ReaderConfig": "Dialer", "ConsumerGroupConfig": "Dialer", "Client": "Transport", "Writer": "Transport"}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules" {
				return filepath.SkipDir
			}
			for _, skip := range notProduct {
				if rel == skip {
					return filepath.SkipDir
				}
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || takenByCaller[filepath.ToSlash(rel)] {
			return nil
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		checked += callersSetTransport(t, fset, f)
		kafkaName := ""
		for _, imp := range f.Imports {
			if strings.Trim(imp.Path.Value, `"`) == "github.com/segmentio/kafka-go" {
				kafkaName = "kafka"
				if imp.Name != nil {
					kafkaName = imp.Name.Name
				}
			}
		}
		if kafkaName == "" {
			return nil
		}
		isKafka := func(e ast.Expr) (string, bool) {
			sel, ok := e.(*ast.SelectorExpr)
			if !ok {
				return "", false
			}
			id, ok := sel.X.(*ast.Ident)
			return sel.Sel.Name, ok && id.Name == kafkaName
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				typ, ok := isKafka(n.Type)
				field, needed := needs[typ]
				if !ok || !needed {
					return true
				}
				checked++
				for _, elt := range n.Elts {
					if kv, ok := elt.(*ast.KeyValueExpr); ok {
						if k, ok := kv.Key.(*ast.Ident); ok && k.Name == field {
							return true
						}
					}
				}
				t.Errorf("%s: kafka.%s without %s: it would use kafka-go's plaintext default, not the service's KAFKA_TLS*/KAFKA_SASL_* (use kafkaauth.Security)", fset.Position(n.Pos()), typ, field)
			case *ast.CallExpr:
				if name, ok := isKafka(n.Fun); ok && (name == "Dial" || name == "DialContext" || name == "DialLeader" || name == "DialPartition") {
					checked++
					t.Errorf("%s: kafka.%s dials with kafka-go's plaintext default dialer; use the Security's Dialer()", fset.Position(n.Pos()), name)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 6 {
		t.Fatalf("only %d Kafka clients found in the product; the scan is looking in the wrong place", checked)
	}
}

// callersSetTransport checks the constructions takenByCaller leaves to
// their callers: an events.ProducerConfig literal names its Transport, and
// a function that calls relay.NewWriter assigns the writer's Transport.
// It returns how many it checked.
func callersSetTransport(t *testing.T, fset *token.FileSet, f *ast.File) int {
	t.Helper()
	checked := 0
	is := func(e ast.Expr, pkg, name string) bool {
		sel, ok := e.(*ast.SelectorExpr)
		if !ok {
			return false
		}
		id, ok := sel.X.(*ast.Ident)
		return ok && id.Name == pkg && sel.Sel.Name == name
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CompositeLit:
			if !is(n.Type, "events", "ProducerConfig") {
				return true
			}
			checked++
			for _, elt := range n.Elts {
				if kv, ok := elt.(*ast.KeyValueExpr); ok {
					if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "Transport" {
						return true
					}
				}
			}
			t.Errorf("%s: events.ProducerConfig without Transport: the producer would ignore KAFKA_TLS*/KAFKA_SASL_*", fset.Position(n.Pos()))
		case *ast.FuncDecl:
			if n.Body == nil {
				return false
			}
			var calls []ast.Node
			assigned := false
			ast.Inspect(n.Body, func(m ast.Node) bool {
				switch m := m.(type) {
				case *ast.CallExpr:
					if is(m.Fun, "relay", "NewWriter") {
						calls = append(calls, m)
					}
				case *ast.AssignStmt:
					for _, l := range m.Lhs {
						if sel, ok := l.(*ast.SelectorExpr); ok && sel.Sel.Name == "Transport" {
							assigned = true
						}
					}
				}
				return true
			})
			checked += len(calls)
			if len(calls) > 0 && !assigned {
				t.Errorf("%s: %s calls relay.NewWriter without setting the writer's Transport: the relay would ignore KAFKA_TLS*/KAFKA_SASL_*", fset.Position(calls[0].Pos()), n.Name.Name)
			}
		}
		return true
	})
	return checked
}
