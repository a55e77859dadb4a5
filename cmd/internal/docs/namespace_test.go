package docs

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"testing"
	"testing/fstest"

	"gopkg.in/yaml.v3"

	"github.com/tokencache/tokencache/cmd/internal/cli"
	"github.com/tokencache/tokencache/tokencache"
)

// namespaceUse is one place of the repository that names the shared token.
type namespaceUse struct {
	where string // file:line, or file and what in it
	ns    string
}

var (
	// newCall finds the start of a tokencache.New( call.
	newCall = regexp.MustCompile(`tokencache\.New\(`)
	// withNS reads WithNamespace("x") and WithNamespace(getenv("TOKENCACHE_NAMESPACE", "x")).
	withNS = regexp.MustCompile(`WithNamespace\((?:"([^"]*)"|\w+\("TOKENCACHE_NAMESPACE", "([^"]*)"\)|([^)]*))`)
	// keyRef reads the namespace of a key or channel name: tokencache:{x}:…,
	// and a bare `{x}` or `{x/<userId>}` in prose.
	keyRef = regexp.MustCompile("tokencache:\\{([^}/]*)(?:/[^}]*)?\\}|`\\{([^}/`]*)(?:/[^}`]*)?\\}`")
	// envRef reads TOKENCACHE_NAMESPACE=x and --namespace x (or =x).
	envRef = regexp.MustCompile(`TOKENCACHE_NAMESPACE=([^\s'"]+)|--namespace[= ]([^\s'"]+)`)
)

// lineOf is the 1-based line of offset i in s.
func lineOf(s string, i int) int { return strings.Count(s[:i], "\n") + 1 }

// callText returns the text of the call whose "(" ends at open: up to the
// matching ")".
func callText(s string, open int) string {
	depth := 0
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return s[open : i+1]
			}
		}
	}
	return s[open:]
}

// goUses finds the namespace of every tokencache.New call in Go source (a
// file, or a Go block of a Markdown file starting at line first).
func goUses(name string, first int, src string) ([]namespaceUse, error) {
	var out []namespaceUse
	for _, loc := range newCall.FindAllStringIndex(src, -1) {
		where := fmt.Sprintf("%s:%d", name, first+lineOf(src, loc[0])-1)
		call := callText(src, loc[1]-1)
		m := withNS.FindStringSubmatch(call)
		switch {
		case m == nil:
			out = append(out, namespaceUse{where + " (tokencache.New without WithNamespace)", tokencache.DefaultNamespace})
		case m[1] != "" || m[2] != "":
			out = append(out, namespaceUse{where, m[1] + m[2]})
		default:
			return nil, fmt.Errorf("%s: cannot tell the namespace of WithNamespace(%s): use a literal or getenv(\"TOKENCACHE_NAMESPACE\", default)", where, m[3])
		}
	}
	return out, nil
}

// textUses finds the namespaces named in key names, TOKENCACHE_NAMESPACE
// assignments and --namespace flags of any text. Placeholders (<ns>) are
// skipped.
func textUses(name string, src string) []namespaceUse {
	var out []namespaceUse
	for _, re := range []*regexp.Regexp{keyRef, envRef} {
		for _, m := range re.FindAllStringSubmatchIndex(src, -1) {
			for g := 2; g+1 < len(m); g += 2 {
				if m[g] < 0 {
					continue
				}
				ns := src[m[g]:m[g+1]]
				if strings.ContainsAny(ns, "<>$") || ns == "" {
					continue
				}
				out = append(out, namespaceUse{fmt.Sprintf("%s:%d", name, lineOf(src, m[0])), ns})
			}
		}
	}
	return out
}

// markdownUses reads a Markdown file: its Go blocks as Go, all of it as text.
func markdownUses(name, src string) ([]namespaceUse, error) {
	out := textUses(name, src)
	rest, offset := src, 0
	for {
		i := strings.Index(rest, "```go\n")
		if i < 0 {
			return out, nil
		}
		body := rest[i+len("```go\n"):]
		end := strings.Index(body, "```")
		if end < 0 {
			return nil, fmt.Errorf("%s: unterminated ```go block", name)
		}
		first := lineOf(src, offset+i) + 1
		uses, err := goUses(name, first, body[:end])
		if err != nil {
			return nil, err
		}
		out = append(out, uses...)
		consumed := i + len("```go\n") + end + 3
		rest, offset = rest[consumed:], offset+consumed
	}
}

// composeVar is a ${VAR:-default} reference, resolved to its default.
var composeVar = regexp.MustCompile(`\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}`)

// composeUses reads docker-compose.yml: each service that runs one of our
// programs names TOKENCACHE_NAMESPACE or gets the default.
func composeUses(name, src string) ([]namespaceUse, error) {
	var cf struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Entrypoint  []string          `yaml:"entrypoint"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal([]byte(src), &cf); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	out := textUses(name, src)
	for svc, s := range cf.Services {
		if len(s.Entrypoint) == 0 {
			continue // not one of our programs
		}
		prog := path.Base(s.Entrypoint[0])
		if prog == "fakeissuer" {
			continue // the issuer has no namespace
		}
		where := fmt.Sprintf("%s service %s", name, svc)
		ns := tokencache.DefaultNamespace
		if v, ok := s.Environment["TOKENCACHE_NAMESPACE"]; ok {
			ns = composeVar.ReplaceAllString(v, "$1")
			where += " TOKENCACHE_NAMESPACE"
		}
		for i, a := range s.Command {
			if a == "--namespace" && i+1 < len(s.Command) {
				ns, where = s.Command[i+1], where+" --namespace"
			}
		}
		out = append(out, namespaceUse{where, ns})
	}
	return out, nil
}

// k8sUses reads the CronJob's container: env and args.
func k8sUses(name, src string) ([]namespaceUse, error) {
	var cj struct {
		Spec struct {
			JobTemplate struct {
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Args []string `yaml:"args"`
								Env  []struct {
									Name  string `yaml:"name"`
									Value string `yaml:"value"`
								} `yaml:"env"`
							} `yaml:"containers"`
						} `yaml:"spec"`
					} `yaml:"template"`
				} `yaml:"spec"`
			} `yaml:"jobTemplate"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal([]byte(src), &cj); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	out := textUses(name, src)
	for _, c := range cj.Spec.JobTemplate.Spec.Template.Spec.Containers {
		ns, where := cli.DefaultNamespace, name+" container (the command's default)"
		for _, e := range c.Env {
			if e.Name == "TOKENCACHE_NAMESPACE" {
				ns, where = e.Value, name+" env TOKENCACHE_NAMESPACE"
			}
		}
		for i, a := range c.Args {
			if a == "--namespace" && i+1 < len(c.Args) {
				ns, where = c.Args[i+1], name+" args --namespace"
			}
		}
		out = append(out, namespaceUse{where, ns})
	}
	return out, nil
}

// namespaceUses collects every namespace the README, docs/ (cli, redis,
// cron, kubernetes, configuration), the
// examples, docker-compose.yml and the Kubernetes CronJob name, and the
// library's and the command's defaults.
func namespaceUses(fsys fs.FS) ([]namespaceUse, error) {
	uses := []namespaceUse{
		{"tokencache.DefaultNamespace", tokencache.DefaultNamespace},
		{"cli.DefaultNamespace (the command's --namespace)", cli.DefaultNamespace},
	}
	read := func(name string) (string, error) {
		b, err := fs.ReadFile(fsys, name)
		return string(b), err
	}
	for _, name := range []string{"README.md", "docs/cli.md", "docs/redis.md", "docs/cron.md", "docs/kubernetes.md", "docs/configuration.md"} {
		src, err := read(name)
		if err != nil {
			return nil, err
		}
		u, err := markdownUses(name, src)
		if err != nil {
			return nil, err
		}
		uses = append(uses, u...)
	}
	err := fs.WalkDir(fsys, "examples", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		src, err := read(p)
		if err != nil {
			return err
		}
		var u []namespaceUse
		switch {
		case strings.HasSuffix(p, "_test.go"):
			return nil
		case strings.HasSuffix(p, ".go"):
			if u, err = goUses(p, 1, src); err != nil {
				return err
			}
			u = append(u, textUses(p, src)...)
		case p == "examples/k8s-cronjob.yaml":
			if u, err = k8sUses(p, src); err != nil {
				return err
			}
		default:
			u = textUses(p, src)
		}
		uses = append(uses, u...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	src, err := read("docker-compose.yml")
	if err != nil {
		return nil, err
	}
	u, err := composeUses("docker-compose.yml", src)
	if err != nil {
		return nil, err
	}
	return append(uses, u...), nil
}

// checkOneNamespace fails unless every use names the same namespace; its
// error lists the minority uses.
func checkOneNamespace(uses []namespaceUse) error {
	by := map[string][]string{}
	for _, u := range uses {
		by[u.ns] = append(by[u.ns], u.where)
	}
	if len(by) <= 1 {
		return nil
	}
	names := make([]string, 0, len(by))
	for ns := range by {
		names = append(names, ns)
	}
	// The namespace most places use first; the odd ones out after it.
	sort.Slice(names, func(i, j int) bool {
		if len(by[names[i]]) != len(by[names[j]]) {
			return len(by[names[i]]) > len(by[names[j]])
		}
		return names[i] < names[j]
	})
	var b strings.Builder
	fmt.Fprintf(&b, "the repository names %d different tokens: %q in %d places", len(by), names[0], len(by[names[0]]))
	for _, ns := range names[1:] {
		fmt.Fprintf(&b, "; %q in %s", ns, strings.Join(by[ns], ", "))
	}
	return fmt.Errorf("%s", b.String())
}

// TestOneNamespace checks that everything a team copies from the
// repository — the README's snippets, cron line and redis-cli runbook,
// the examples, docker-compose.yml and the Kubernetes CronJob — names the
// same token, so that the refresher refreshes the token the backends read.
func TestOneNamespace(t *testing.T) {
	uses, err := namespaceUses(os.DirFS(repoRoot))
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"README.md:", "docs/cli.md:", "docker-compose.yml service backend1 TOKENCACHE_NAMESPACE",
		"examples/k8s-cronjob.yaml env", "examples/backend/main.go:", "examples/cron/main.go:", "examples/peruser/main.go:"} {
		found := false
		for _, u := range uses {
			found = found || strings.HasPrefix(u.where, must)
		}
		if !found {
			t.Errorf("no namespace found in %s: the checker reads nothing there", must)
		}
	}
	if len(uses) < 20 {
		t.Errorf("only %d uses found; the checker reads too little", len(uses))
	}
	if err := checkOneNamespace(uses); err != nil {
		t.Error(err)
	}
}

// TestOneNamespaceCatchesADisagreement runs the check on copies of the
// repository's files, each broken in one place, and expects it to name
// that place.
func TestOneNamespaceCatchesADisagreement(t *testing.T) {
	root := os.DirFS(repoRoot)
	base := fstest.MapFS{}
	err := fs.WalkDir(root, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != "." && p != "docs" && p != "examples" && !strings.HasPrefix(p, "examples/") {
				return fs.SkipDir
			}
			return nil
		}
		b, err := fs.ReadFile(root, p)
		base[p] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, file, old, new string
		want                 string // in the error
	}{
		{"README snippet", "README.md", "cache, err := tokencache.New(rdb, fetcher)", `cache, err := tokencache.New(rdb, fetcher, tokencache.WithNamespace("basiq"))`, `"basiq" in README.md:`},
		{"README runbook", "README.md", "redis-cli GET 'tokencache:{default}:server'", "redis-cli GET 'tokencache:{basiq}:server'", `"basiq" in README.md:`},
		{"compose", "docker-compose.yml", "TOKENCACHE_NAMESPACE: default", "TOKENCACHE_NAMESPACE: basiq", `"basiq" in docker-compose.yml service`},
		{"compose flag", "docker-compose.yml", `"daemon", "--listen"`, `"daemon", "--namespace", "basiq", "--listen"`, `"basiq" in docker-compose.yml service refresher`},
		{"k8s", "examples/k8s-cronjob.yaml", "value: default", "value: basiq", `"basiq" in examples/k8s-cronjob.yaml env TOKENCACHE_NAMESPACE`},
		{"example default", "examples/backend/main.go", `getenv("TOKENCACHE_NAMESPACE", "default")`, `getenv("TOKENCACHE_NAMESPACE", "basiq")`, `"basiq" in examples/backend/main.go:`},
		{"example literal", "examples/cron/main.go", `getenv("TOKENCACHE_NAMESPACE", "default")`, `"basiq"`, `"basiq" in examples/cron/main.go:`},
		{"unknowable", "examples/peruser/main.go", `getenv("TOKENCACHE_NAMESPACE", "default")`, `ns`, `cannot tell the namespace`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			broken := fstest.MapFS{}
			for k, v := range base {
				broken[k] = v
			}
			src := string(base[tt.file].Data)
			if !strings.Contains(src, tt.old) {
				t.Fatalf("%s no longer holds %q: update the test", tt.file, tt.old)
			}
			broken[tt.file] = &fstest.MapFile{Data: []byte(strings.Replace(src, tt.old, tt.new, 1))}
			uses, err := namespaceUses(broken)
			if err == nil {
				err = checkOneNamespace(uses)
			}
			if err == nil {
				t.Fatal("the check passed a broken copy")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name %q", err, tt.want)
			}
			t.Logf("broken copy: %v", err)
		})
	}
}
