package docs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadmeQuickStartCompiles builds the first Go block of README.md as a
// program of the library's module alone (outside the workspace): what an
// application that imports the library compiles.
func TestReadmeQuickStartCompiles(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "```go\n")
	if !ok {
		t.Fatal("README.md has no ```go block")
	}
	code, _, ok := strings.Cut(rest, "```")
	if !ok || !strings.HasPrefix(code, "package main") {
		t.Fatalf("the first Go block of README.md is not a whole program:\n%s", code)
	}
	dir, err := os.MkdirTemp(root, ".readme-quickstart-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "vet", "./"+filepath.Base(dir))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the README quick start does not compile: %v\n%s", err, out)
	}
}

// TestReadmeFirstScreen checks what a newcomer reads first: how to
// install (go get, and the replace line for a checkout), an example of at
// most 15 lines in main that runs against the fake issuer through
// basiq.WithBaseURL, and the two commands, the test command exactly as
// .ci/run depends on it; and that the README stays short, with the rest
// in docs/.
func TestReadmeFirstScreen(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(readme)
	if n := strings.Count(s, "\n"); n > 300 {
		t.Errorf("README.md has %d lines: keep it near 250, move reference to docs/", n)
	}
	_, rest, _ := strings.Cut(s, "```go\n")
	code, _, _ := strings.Cut(rest, "```")
	for _, want := range []string{
		"go get github.com/tokencache/tokencache\n",
		"replace github.com/tokencache/tokencache => ",
		"go run ./cmd/tokencache demo",
		"TOKENCACHE_REQUIRE_REDIS=1 go test -race -count=1 work",
	} {
		if !strings.Contains(s[:strings.Index(s, "## ")], want) {
			t.Errorf("the README's first screen (before its first ## section) lacks %q", want)
		}
	}
	if !strings.Contains(code, "basiq.WithBaseURL(") {
		t.Errorf("the README's example does not show basiq.WithBaseURL (it runs against the fake issuer)")
	}
	_, body, ok := strings.Cut(code, "func main() {\n")
	if !ok {
		t.Fatal("the README's example has no func main")
	}
	if n := strings.Count(body, "\n"); n > 15 {
		t.Errorf("the README's example main is %d lines, want at most 15", n)
	}
	if strings.Contains(s, "previous release") {
		t.Error("README.md names a previous release; there is none (CHANGELOG.md)")
	}
	for _, f := range []string{"LICENSE", "CHANGELOG.md"} {
		if _, err := os.Stat(filepath.Join(repoRoot, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestExamplesReadmeListsEveryExample checks that examples/README.md has
// a row for every example directory and file.
func TestExamplesReadmeListsEveryExample(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repoRoot, "examples", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(repoRoot, "examples"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "README.md" {
			continue
		}
		if !strings.Contains(string(doc), "| ["+e.Name()+"](") {
			t.Errorf("examples/README.md has no row for %s", e.Name())
		}
	}
}
