package docs

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../../.."

// The repository is a Go workspace: go.work at the root uses the library's
// module (the root), the commands' (cmd/) and the Prometheus adapter's
// (tokencache/tokencacheprom/) and the OpenTelemetry adapter's
// (tokencache/tokencacheotel/). The tests below keep the split invisible:
// every module is in go.work, every go command the documentation shows
// works from the root, the repository-wide ones reach every module, and a
// program that imports the library does not get the commands'
// dependencies.

// goCmd runs the go command in the repository root and returns its
// standard output.
func goCmd(t *testing.T, env []string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// module is a module of the workspace.
type module struct {
	dir  string // relative to the repository root, "." for the root
	path string // module path
}

// workspaceModules returns the modules go.work uses, as the go command
// reads them.
func workspaceModules(t *testing.T) []module {
	t.Helper()
	var work struct{ Use []struct{ DiskPath string } }
	if err := json.Unmarshal(goCmd(t, nil, "work", "edit", "-json", "go.work"), &work); err != nil {
		t.Fatal(err)
	}
	var out []module
	for _, u := range work.Use {
		dir := path.Clean(u.DiskPath)
		var mod struct{ Module struct{ Path string } }
		if err := json.Unmarshal(goCmd(t, nil, "mod", "edit", "-json", path.Join(dir, "go.mod")), &mod); err != nil {
			t.Fatal(err)
		}
		out = append(out, module{dir, mod.Module.Path})
	}
	if len(out) == 0 {
		t.Fatal("go.work uses no module")
	}
	return out
}

// goModDirs returns the directory of every go.mod of the repository,
// except where the go command never looks (testdata, dot and underscore
// directories).
func goModDirs(fsys fs.FS) ([]string, error) {
	var dirs []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != "." && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") || strings.HasPrefix(d.Name(), "_")) {
			return fs.SkipDir
		}
		if !d.IsDir() && d.Name() == "go.mod" {
			dirs = append(dirs, path.Dir(p))
		}
		return nil
	})
	sort.Strings(dirs)
	return dirs, err
}

// TestEveryModuleIsInTheWorkspace checks that go.work uses every go.mod of
// the repository: a module left out would be skipped by the README's test
// command, by vet and by staticcheck without a word.
func TestEveryModuleIsInTheWorkspace(t *testing.T) {
	dirs, err := goModDirs(os.DirFS(repoRoot))
	if err != nil {
		t.Fatal(err)
	}
	var used []string
	for _, m := range workspaceModules(t) {
		used = append(used, m.dir)
	}
	sort.Strings(used)
	if !slices.Equal(dirs, used) {
		t.Errorf("go.mod files in %q, go.work uses %q: run go work use -r .", dirs, used)
	}
	if len(dirs) < 3 {
		t.Errorf("only %d go.mod files found (%q): the walk reads too little", len(dirs), dirs)
	}
}

// goCommand is a go command that the documentation or CI shows.
type goCommand struct {
	where    string // file:line
	text     string
	patterns []string // its package patterns
}

// goCmdRef finds a go command that takes packages: go test, vet, build,
// run, install, list, and staticcheck run with go run.
var goCmdRef = regexp.MustCompile(`\bgo (test|vet|build|run|install|list)\b`)

// valueFlags are the flags, of the go command and of test binaries, that
// the documentation writes with their value as the next word.
var valueFlags = map[string]bool{
	"-run": true, "-bench": true, "-benchtime": true, "-count": true, "-timeout": true,
	"-fuzz": true, "-fuzztime": true, "-cpuprofile": true, "-memprofile": true,
	"-o": true, "-p": true, "-tags": true, "-ldflags": true, "-cpu": true, "-parallel": true,
}

// shellWords splits a command line as a shell would, for what the
// documentation writes: words, single and double quotes, backslash
// escapes; it stops at a comment or at a shell operator.
func shellWords(s string) []string {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(c)
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == '\\' && i+1 < len(rs):
			i++
			w.WriteRune(rs[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case !inWord && (c == '#' || strings.ContainsRune(";&|<>`", c)):
			return words
		case strings.ContainsRune(";&|<>`", c):
			return append(words, w.String())
		default:
			w.WriteRune(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// packagePatterns returns the package patterns of a go command's words,
// starting at the subcommand: for go run the program (or, for a tool run
// with go run, such as staticcheck, the patterns it is given); for the
// others every word that is neither a flag nor a flag's value. Words a
// shell would expand ($pkg) are left out.
func packagePatterns(words []string) []string {
	sub, args := words[0], words[1:]
	var pats []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case strings.HasPrefix(a, "-"):
			if valueFlags[a] {
				i++
			}
		case strings.Contains(a, "$"):
		case (sub == "run" || sub == "install") && strings.Contains(a, "@"):
			// A tool at a version: what follows is its own arguments, and
			// for staticcheck those are packages.
			if strings.Contains(a, "/staticcheck@") {
				return packagePatterns(append([]string{"vet"}, args[i+1:]...))
			}
			return nil
		case sub == "run":
			return []string{a} // what follows is the program's arguments
		default:
			pats = append(pats, a)
		}
	}
	return pats
}

// goCommands returns the go commands of a file: in Markdown, the lines of
// code blocks other than Go and the inline code spans (which may go on
// over a line break); elsewhere, every line that is not a comment or an
// echo.
func goCommands(name, src string) []goCommand {
	var out []goCommand
	markdown := strings.HasSuffix(name, ".md")
	block := ""     // the info string of the Markdown code block we are in, "text" for none
	inSpan := false // inside a `…` span that began on an earlier line
	for i, line := range strings.Split(src, "\n") {
		var texts []string
		switch {
		case markdown && strings.HasPrefix(line, "```"):
			if block == "" {
				block = cmp.Or(strings.TrimPrefix(line, "```"), "text")
			} else {
				block = ""
			}
			continue
		case markdown && block == "go":
			continue
		case markdown && block == "":
			for j, part := range strings.Split(line, "`") {
				if j > 0 {
					inSpan = !inSpan
				}
				if inSpan {
					texts = append(texts, part)
				}
			}
		case !markdown && (strings.HasPrefix(strings.TrimSpace(line), "#") || strings.HasPrefix(strings.TrimSpace(line), "echo ")):
			continue
		default:
			texts = []string{line}
		}
		for _, text := range texts {
			for _, loc := range goCmdRef.FindAllStringIndex(text, -1) {
				words := shellWords(text[loc[0]+len("go "):])
				if len(words) == 0 {
					continue
				}
				if pats := packagePatterns(words); len(pats) > 0 {
					out = append(out, goCommand{fmt.Sprintf("%s:%d", name, i+1), "go " + strings.Join(words, " "), pats})
				}
			}
		}
	}
	return out
}

// documentedGoCommands returns the go commands of the README, docs/,
// testdata/README.md, .ci/run and the Dockerfile.
func documentedGoCommands(t *testing.T) []goCommand {
	t.Helper()
	names := []string{"README.md", "testdata/README.md", "examples/README.md", ".ci/run", "Dockerfile"}
	docs, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		names = append(names, "docs/"+filepath.Base(d))
	}
	var out []goCommand
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(repoRoot, name))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, goCommands(name, string(b))...)
	}
	return out
}

// repositoryWide reports whether a command is meant to reach every package.
func repositoryWide(c goCommand) bool {
	return slices.Contains(c.patterns, "./...") || slices.Contains(c.patterns, "work") || slices.Contains(c.patterns, "all")
}

// TestDocumentedGoCommandsWorkFromTheRoot runs go list, from the
// repository root, on the packages of every go command the documentation
// and CI show: each names packages that exist, and each repository-wide
// one (./..., work) reaches every module of the workspace. The README's
// test command and CI's vet, staticcheck, build and test must be among the
// repository-wide ones.
func TestDocumentedGoCommandsWorkFromTheRoot(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list for every documented command")
	}
	mods := workspaceModules(t)
	cmds := documentedGoCommands(t)
	t.Logf("%d go commands checked", len(cmds))
	if len(cmds) < 20 {
		t.Errorf("only %d go commands found: the reader reads too little", len(cmds))
	}
	type result struct {
		modules map[string]bool
		err     string
	}
	seen := map[string]result{}
	for _, c := range cmds {
		key := strings.Join(c.patterns, " ")
		r, ok := seen[key]
		if !ok {
			r = result{modules: map[string]bool{}}
			cmd := exec.Command("go", append([]string{"list", "-f", "{{with .Module}}{{.Path}}{{end}}"}, c.patterns...)...)
			cmd.Dir = repoRoot
			out, err := cmd.CombinedOutput()
			switch {
			case err != nil:
				r.err = fmt.Sprintf("%v: %s", err, out)
			case strings.Contains(string(out), "matched no packages"):
				r.err = string(out)
			default:
				for _, m := range strings.Fields(string(out)) {
					r.modules[m] = true
				}
			}
			seen[key] = r
		}
		if r.err != "" {
			t.Errorf("%s: %s: go list %s: %s", c.where, c.text, key, r.err)
			continue
		}
		if !repositoryWide(c) {
			continue
		}
		for _, m := range mods {
			if !r.modules[m.path] {
				t.Errorf("%s: %s: misses the module %s (%s): use the pattern work, which matches every module of go.work", c.where, c.text, m.path, m.dir)
			}
		}
	}
	// The commands that must reach everything, and must be found as such.
	for _, must := range []struct{ file, cmd string }{
		{"README.md", "go test"}, {".ci/run", "go vet"}, {".ci/run", "staticcheck"},
		{".ci/run", "go build"}, {".ci/run", "go test"},
	} {
		found := false
		for _, c := range cmds {
			found = found || (strings.HasPrefix(c.where, must.file+":") && strings.Contains(c.text, must.cmd) && repositoryWide(c))
		}
		if !found {
			t.Errorf("%s has no repository-wide %s", must.file, must.cmd)
		}
	}
}

// TestGoCommandReader checks the reader of documented commands on the
// shapes the documentation uses.
func TestGoCommandReader(t *testing.T) {
	tests := []struct {
		name, file, src string
		want            [][]string // patterns of each command found
	}{
		{"test command", "README.md", "```sh\nTOKENCACHE_REQUIRE_REDIS=1 go test -race -count=1 work  # the tests\n```\n", [][]string{{"work"}}},
		{"run takes one package", "README.md", "```sh\ngo run ./cmd/tokencache demo --redis redis://x:1/0\n```\n", [][]string{{"./cmd/tokencache"}}},
		{"inline, over two lines", "README.md", "checks: `go test ./cmd/internal/cli -run\n'Docker|K8s'` checks", [][]string{{"./cmd/internal/cli"}}},
		{"flag values", "docs/x.md", "`go test -run '^$' -bench 'A\\|B' -benchmem -count 3 ./tokencache/`", [][]string{{"./tokencache/"}}},
		{"staticcheck", ".ci/run", "go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 work\n", [][]string{{"work"}}},
		{"shell variable", ".ci/run", "\tgo test -run '^$' -fuzz \"^${name}\\$\" -fuzztime \"$T\" \"$pkg\" </dev/null\n", nil},
		{"prose", "README.md", "the go test binary\n", nil},
		{"Go block", "README.md", "```go\n// go test ./x\n```\n```sh\ngo vet ./y\n```\n", [][]string{{"./y"}}},
		{"CI comment and echo", ".ci/run", "# one target (go test -fuzz takes one), a few\necho \"ci: go vet\"\ngo vet work\n", [][]string{{"work"}}},
		{"Dockerfile", "Dockerfile", "RUN CGO_ENABLED=0 go build -trimpath -ldflags=\"-s -w\" -o /out/ ./cmd/a ./examples/b\n", [][]string{{"./cmd/a", "./examples/b"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got [][]string
			for _, c := range goCommands(tt.file, tt.src) {
				got = append(got, c.patterns)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("patterns %q, want %q", got, tt.want)
			}
		})
	}
}

// TestLibraryGraphIsLean builds a program that imports the library's
// packages, in a module of its own outside the workspace, and checks that
// its module graph holds none of the commands' dependencies: Go's version
// selection would let their versions override the application's own.
func TestLibraryGraphIsLean(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	var lib struct{ Go string }
	if err := json.Unmarshal(goCmd(t, nil, "mod", "edit", "-json", "go.mod"), &lib); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": fmt.Sprintf("module example.com/app\n\ngo %s\n\nrequire github.com/tokencache/tokencache v0.0.0-00010101000000-000000000000\n\nreplace github.com/tokencache/tokencache => %s\n", lib.Go, root),
		"main.go": `package main

import (
	"fmt"

	_ "github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/tokencache"
	_ "github.com/tokencache/tokencache/tokencache/basiq"
	_ "github.com/tokencache/tokencache/tokencache/issuertest"
	_ "github.com/tokencache/tokencache/tokencache/jwtauth"
)

func main() { fmt.Println(tokencache.DefaultNamespace) }
`,
	}
	// The library's go.sum vouches for its requirements: the program
	// needs no checksum database (none is reachable offline), and a
	// module whose hash differs from the library's fails the check.
	sums, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	files["go.sum"] = string(sums)
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Outside the workspace, from the module cache only: the library's
	// own go.mod is all the program sees.
	env := []string{"GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY=off"}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// -mod=mod lets the build add the requirements it needs; tidy would
	// also want the test dependencies of every dependency, which an
	// offline module cache need not hold.
	run("build", "-o", os.DevNull, ".")
	graph := run("mod", "graph")
	if !strings.Contains(graph, "github.com/tokencache/tokencache@v0.0.0-00010101000000-000000000000 github.com/redis/go-redis/v9@") {
		t.Fatalf("the graph does not show the library's requirement of go-redis: the check reads the wrong graph\n%s", graph)
	}
	for _, edge := range strings.Split(strings.TrimSpace(graph), "\n") {
		for _, dep := range commandOnly {
			if f := strings.Fields(edge); len(f) == 2 && strings.HasPrefix(f[1], dep) {
				t.Errorf("the program's module graph holds %s, a dependency of the commands only: %s", dep, edge)
			}
		}
	}
	t.Logf("%d edges in the module graph of a program that imports the library", strings.Count(graph, "\n"))
}

// commandOnly are the module paths (prefixes) that the commands, the
// benchmark and the Prometheus and OpenTelemetry adapters need, and the
// library does not.
var commandOnly = []string{"github.com/prometheus/", "github.com/go-redis/cache/", "gopkg.in/yaml.v3@", "go.opentelemetry.io/"}
