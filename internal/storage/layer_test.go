package storage_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// moduleRoot is the repository's top directory, from this package's.
const moduleRoot = "../.."

// sqlStart matches a string that begins like a SQL statement.
var sqlStart = regexp.MustCompile(`^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|COPY|CREATE|DROP|ALTER|LOCK|TRUNCATE|LISTEN|UNLISTEN)\s`)

// literals calls fn with every string literal of the product's non-test Go
// files (internal/testkit, tools and tests are not product), by package
// directory relative to the module root.
func literals(t *testing.T, fn func(dir, file, lit string)) {
	t.Helper()
	fset := token.NewFileSet()
	err := filepath.WalkDir(moduleRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(moduleRoot, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || rel == "internal/testkit" || rel == "tools" || d.Name() == "testdata" || rel == "sdk") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil {
					fn(filepath.ToSlash(filepath.Dir(rel)), rel, s)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// sqlAllowed reports whether a package directory may hold SQL: the
// storage tree, migrate (the schema) and leader (advisory locks).
func sqlAllowed(dir string) bool {
	return dir == "internal/storage" || strings.HasPrefix(dir, "internal/storage/") ||
		dir == "internal/migrate" || dir == "internal/leader"
}

func TestSQLStaysInStorage(t *testing.T) {
	t.Parallel()
	literals(t, func(dir, file, lit string) {
		if sqlStart.MatchString(lit) && !sqlAllowed(dir) {
			t.Errorf("%s: SQL outside the storage layer: %.60q; add a named operation under internal/storage", file, lit)
		}
	})
}

// written matches the table a statement writes. FOR UPDATE and DO UPDATE
// are removed first: they lock or resolve, the statement names its table
// elsewhere.
var (
	lockClauses = regexp.MustCompile(`(?i)\b(FOR|DO)\s+UPDATE\b`)
	written     = regexp.MustCompile(`(?i)\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?)\s+(?:public\.)?([a-z_][a-z0-9_]*)`)
)

// owners reads the table map of the storage package's doc comment: lines
// "<package> <table>, <table>," and their continuation lines.
func owners(t *testing.T) map[string]string {
	t.Helper()
	src, err := os.ReadFile("storage.go")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	line := regexp.MustCompile(`^//\t(\w+)?\s+([a-z_, ]+)$`)
	pkg := ""
	for _, l := range strings.Split(string(src), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if m[1] != "" {
			pkg = m[1]
		}
		for _, table := range strings.Split(m[2], ",") {
			if table = strings.TrimSpace(table); table != "" {
				out[table] = "internal/storage/" + pkg
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no table map in the storage package's doc comment")
	}
	return out
}

func TestOneWriterPerTable(t *testing.T) {
	t.Parallel()
	writers := map[string][]string{}
	literals(t, func(dir, file, lit string) {
		if !sqlStart.MatchString(lit) && !strings.Contains(lit, "INSERT INTO") {
			return
		}
		for _, m := range written.FindAllStringSubmatch(lockClauses.ReplaceAllString(lit, ""), -1) {
			table := strings.ToLower(m[1])
			if !slices.Contains(writers[table], dir) {
				writers[table] = append(writers[table], dir)
			}
		}
	})
	want := owners(t)
	for table, dirs := range writers {
		if table == "schema_migrations" && slices.Equal(dirs, []string{"internal/migrate"}) {
			continue
		}
		sort.Strings(dirs)
		if owner, ok := want[table]; !ok || len(dirs) != 1 || dirs[0] != owner {
			t.Errorf("table %s is written by %v; the storage doc says %q", table, dirs, owner)
		}
	}
	// Every table of the schema has an owner in the map.
	for _, table := range schemaTables(t) {
		if _, ok := want[table]; !ok {
			t.Errorf("table %s (migrations) has no owner in the storage package's doc", table)
		}
	}
}

// schemaTables lists the tables the migrations create and no later
// migration drops.
func schemaTables(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(moduleRoot, "migrations", "*.sql"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations: %v", err)
	}
	stmt := regexp.MustCompile(`(?i)(CREATE|DROP)\s+TABLE\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?([a-z_][a-z0-9_]*)`)
	var out []string
	for _, f := range files { // in the order they apply
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range stmt.FindAllStringSubmatch(string(src), -1) {
			table := strings.ToLower(m[2])
			if strings.EqualFold(m[1], "DROP") {
				out = slices.DeleteFunc(out, func(s string) bool { return s == table })
			} else {
				out = append(out, table)
			}
		}
	}
	return out
}
