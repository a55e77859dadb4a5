package cli

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../.."

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image      string       `yaml:"image"`
	Build      composeBuild `yaml:"build"`
	Entrypoint []string     `yaml:"entrypoint"`
	Command    []string     `yaml:"command"`
	DependsOn  any          `yaml:"depends_on"`
}

// composeBuild accepts both "build: ." and "build: {context, dockerfile}".
type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

func (b *composeBuild) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		b.Context = n.Value
		return nil
	}
	type plain composeBuild
	return n.Decode((*plain)(b))
}

// buildLine finds the go build of the Dockerfile and its output directory.
var buildLine = regexp.MustCompile(`go build [^\n]*-o (\S+) ([^\n]+)`)

// TestDockerCompose checks that every service of docker-compose.yml refers
// to things that exist: a build context and Dockerfile, a program the
// Dockerfile builds from a cmd/ or examples/ package, and for tokencache a
// subcommand the binary has. No Docker engine is needed.
func TestDockerCompose(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(raw, &cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, want := range []string{"redis", "refresher", "issuer"} {
		if _, ok := cf.Services[want]; !ok {
			t.Errorf("no %q service", want)
		}
	}
	backends := 0
	subcommands := map[string]bool{}
	for _, c := range commands() {
		subcommands[c.name] = true
	}

	for name, s := range cf.Services {
		t.Run(name, func(t *testing.T) {
			if s.Build.Context == "" {
				if s.Image == "" {
					t.Fatal("neither build nor image")
				}
				return
			}
			ctxDir := filepath.Join(repoRoot, s.Build.Context)
			if st, err := os.Stat(ctxDir); err != nil || !st.IsDir() {
				t.Fatalf("build context %q is not a directory", s.Build.Context)
			}
			df := s.Build.Dockerfile
			if df == "" {
				df = "Dockerfile"
			}
			dockerfile, err := os.ReadFile(filepath.Join(ctxDir, df))
			if err != nil {
				t.Fatalf("dockerfile: %v", err)
			}
			programs := builtPrograms(t, ctxDir, string(dockerfile))
			if len(s.Entrypoint) == 0 {
				t.Fatal("no entrypoint: say which program of the image runs")
			}
			prog := path.Base(s.Entrypoint[0])
			if _, ok := programs[prog]; !ok {
				t.Fatalf("entrypoint %q is not built by %s (it builds %v)", s.Entrypoint[0], df, keys(programs))
			}
			if prog == "backend" {
				backends++
			}
			if prog == "tokencache" {
				if len(s.Command) == 0 || !subcommands[s.Command[0]] {
					t.Fatalf("command %v: not a tokencache subcommand", s.Command)
				}
				// The flags must parse (no Redis is contacted by parsing).
				var g globals
				_ = g.init(func(string) string { return "" })
				a := &app{g: g}
				fs := a.newFlagSet(s.Command[0])
				fs.String("listen", "", "")
				fs.Duration("interval", 0, "")
				if err := fs.Parse(s.Command[1:]); err != nil {
					t.Errorf("command %v: %v", s.Command, err)
				}
			}
		})
	}
	if backends != 3 {
		t.Errorf("%d backend replicas, want 3", backends)
	}
}

// builtPrograms returns the programs a Dockerfile's go build produces,
// checking that each is a main package under cmd/ or examples/.
func builtPrograms(t *testing.T, ctxDir, dockerfile string) map[string]string {
	t.Helper()
	m := buildLine.FindStringSubmatch(dockerfile)
	if m == nil {
		t.Fatal("the Dockerfile has no go build -o line")
	}
	out := map[string]string{}
	for _, pkg := range strings.Fields(m[2]) {
		if !strings.HasPrefix(pkg, "./cmd/") && !strings.HasPrefix(pkg, "./examples/") {
			t.Errorf("builds %q, not a cmd/ or examples/ package", pkg)
			continue
		}
		mainGo, err := os.ReadFile(filepath.Join(ctxDir, pkg, "main.go"))
		if err != nil || !strings.Contains(string(mainGo), "package main") {
			t.Errorf("%s: no main package (%v)", pkg, err)
			continue
		}
		out[path.Base(pkg)] = pkg
	}
	return out
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// TestK8sCronJob checks that the example CronJob runs a real subcommand
// with flags it has.
func TestK8sCronJob(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot, "examples", "k8s-cronjob.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cj struct {
		Kind string `yaml:"kind"`
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
	if err := yaml.Unmarshal(raw, &cj); err != nil {
		t.Fatal(err)
	}
	cs := cj.Spec.JobTemplate.Spec.Template.Spec.Containers
	if cj.Kind != "CronJob" || len(cs) != 1 {
		t.Fatalf("kind %q with %d containers", cj.Kind, len(cs))
	}
	args := cs[0].Args
	if len(args) == 0 || args[0] != "refresh" {
		t.Fatalf("args %v: want refresh", args)
	}
	var g globals
	_ = g.init(func(string) string { return "" })
	a := &app{g: g}
	fs := a.newFlagSet("refresh")
	fs.Duration("min-ttl", 0, "")
	fs.Bool("force", false, "")
	if err := fs.Parse(args[1:]); err != nil {
		t.Errorf("args %v: %v", args, err)
	}
	for _, e := range cs[0].Env {
		if _, secret := secretEnv[e.Name]; secret && e.Value != "" {
			t.Errorf("%s has a literal value; use a secretKeyRef", e.Name)
		}
	}
}
