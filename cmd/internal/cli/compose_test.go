package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"go/version"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../../.."

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       *composeBuild     `yaml:"build"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
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

// composeVar is a ${VAR:-default} or ${VAR} reference.
var composeVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}`)

// resolveCompose replaces each ${VAR:-default} by its default, as compose
// does with an empty environment.
func resolveCompose(s string) string {
	return composeVar.ReplaceAllString(s, "$2")
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(raw, &cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return cf
}

// image is what the repository's Dockerfile builds, as the tests see it.
type image struct {
	programs map[string]string // program name -> package (./cmd/x)
	user     string            // USER of the final stage
	goImage  string            // the golang image tag of the build stage
}

func readImage(t *testing.T, ctxDir, dockerfile string) image {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(ctxDir, dockerfile))
	if err != nil {
		t.Fatalf("dockerfile: %v", err)
	}
	df := string(raw)
	img := image{programs: builtPrograms(t, ctxDir, df)}
	for _, line := range strings.Split(df, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "USER":
			img.user = f[1] // the last one wins, as in Docker
		case len(f) >= 2 && f[0] == "FROM" && strings.HasPrefix(f[1], "golang:"):
			img.goImage = strings.TrimPrefix(f[1], "golang:")
		}
	}
	return img
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

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// numericUser reports whether a Dockerfile USER is uid or uid:gid in
// numbers, with a uid other than 0: what runAsNonRoot can verify.
func numericUser(user string) bool {
	uid, gid, hasGID := strings.Cut(user, ":")
	digits := func(s string) bool {
		if s == "" {
			return false
		}
		for _, c := range s {
			if c < '0' || c > '9' {
				return false
			}
		}
		return true
	}
	return digits(uid) && strings.Trim(uid, "0") != "" && (!hasGID || digits(gid))
}

// TestDockerfile checks the image: its builder's Go is a pinned release at
// least as new as every go line of the workspace, its dependency layer
// copies go.work and every module's go.mod and go.sum and downloads each
// module's requirements, and it runs as a numeric non-root user.
func TestDockerfile(t *testing.T) {
	img := readImage(t, repoRoot, "Dockerfile")
	builder, _, _ := strings.Cut(img.goImage, "-")
	if !regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`).MatchString(builder) {
		t.Fatalf("builder image golang:%s: want a pinned release, golang:1.N.P", img.goImage)
	}
	for _, m := range readWorkspace(t) {
		if version.Compare("go"+builder, "go"+m.goLine) < 0 {
			t.Errorf("builder image golang:%s is older than %s's go %s", img.goImage, m.file, m.goLine)
		}
	}
	raw, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	copied, download := dependencyLayer(string(raw))
	if download == nil {
		t.Fatal("the Dockerfile has no go mod download before COPY . .")
	}
	if !copied["go.work"] {
		t.Error("the dependency layer does not COPY go.work")
	}
	for _, m := range readWorkspace(t) {
		if m.file == "go.work" {
			continue // not a module
		}
		for _, f := range []string{"go.mod", "go.sum"} {
			if name := path.Join(m.dir, f); !copied[name] {
				t.Errorf("the dependency layer does not COPY %s", name)
			}
		}
		if !download[m.dir] {
			t.Errorf("the go mod download line does not name the module %s", m.dir)
		}
	}
	if !numericUser(img.user) {
		t.Errorf("USER %q: want a numeric non-root uid[:gid] (runAsNonRoot refuses a named user)", img.user)
	}
	for _, bad := range []string{"nonroot:nonroot", "nonroot", "0:0", "0", "root", "65532:", ""} {
		if numericUser(bad) {
			t.Errorf("numericUser(%q) = true", bad)
		}
	}
}

// workspaceModule is a go.work file or a module it uses, with its go line.
type workspaceModule struct {
	dir    string // relative to the repository root, "." for the root
	file   string // go.work or <dir>/go.mod
	goLine string
}

// readWorkspace returns go.work and every module it uses, as the go
// command reads them.
func readWorkspace(t *testing.T) []workspaceModule {
	t.Helper()
	var work struct {
		Go  string
		Use []struct{ DiskPath string }
	}
	goJSON(t, &work, "work", "edit", "-json", "go.work")
	out := []workspaceModule{{dir: ".", file: "go.work", goLine: work.Go}}
	for _, u := range work.Use {
		var mod struct{ Go string }
		dir := path.Clean(u.DiskPath)
		file := path.Join(dir, "go.mod")
		goJSON(t, &mod, "mod", "edit", "-json", file)
		out = append(out, workspaceModule{dir: dir, file: file, goLine: mod.Go})
	}
	return out
}

// goJSON runs the go command in the repository root and decodes its output.
func goJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v", strings.Join(args, " "), err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("go %s: %v", strings.Join(args, " "), err)
	}
}

// dependencyLayer reads the Dockerfile's lines before "COPY . .": where
// the files they copy land under WORKDIR, and the module directories named by the go mod download line
// (nil if there is none).
func dependencyLayer(dockerfile string) (copied, download map[string]bool) {
	copied = map[string]bool{}
	for _, line := range strings.Split(dockerfile, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "COPY" && !strings.HasPrefix(f[1], "--") {
			if f[1] == "." {
				break
			}
			srcs, dest := f[1:len(f)-1], f[len(f)-1]
			for _, src := range srcs {
				// Where the file lands under WORKDIR: COPY a/go.mod ./a/
				// puts it at a/go.mod.
				if strings.HasSuffix(dest, "/") || len(srcs) > 1 {
					copied[path.Join(dest, path.Base(src))] = true
				} else {
					copied[path.Clean(dest)] = true
				}
			}
		}
		if len(f) >= 1 && f[0] == "RUN" && strings.Contains(line, "go mod download") {
			download = map[string]bool{}
			for _, w := range strings.FieldsFunc(line, func(r rune) bool { return strings.ContainsRune(" ;\"'()", r) }) {
				download[path.Clean(w)] = true
			}
		}
	}
	return copied, download
}

// programSource returns the source of the program an image's entrypoint
// runs: for tokencache, the internal/cli package that holds its logic.
func programSource(t *testing.T, prog, pkg string) string {
	t.Helper()
	dirs := []string{filepath.Join(repoRoot, pkg)}
	if prog == "tokencache" {
		dirs = append(dirs, ".")
	}
	return nonTestSources(t, dirs...)
}

// nonTestSources returns the Go sources, test files excluded, of the
// packages in dirs, one after the other.
func nonTestSources(t *testing.T, dirs ...string) string {
	t.Helper()
	var b strings.Builder
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			b.Write(src)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// checkTokencacheArgs parses args as the tokencache command would, with
// env as its environment, without running the command: "-h" at the end
// makes a known command with valid flags stop at its usage.
func checkTokencacheArgs(args []string, env map[string]string) error {
	err := Run(context.Background(), append(append([]string(nil), args...), "-h"), Env{
		Stdout: io.Discard, Stderr: io.Discard,
		Getenv: func(k string) string { return env[k] },
	})
	if errors.Is(err, flag.ErrHelp) {
		if len(args) == 0 || !isCommand(args[0]) {
			return errors.New("no command")
		}
		return nil
	}
	if err == nil {
		return errors.New("not a command that stops at -h")
	}
	return err
}

func isCommand(name string) bool {
	for _, c := range commands() {
		if c.name == name && !c.hidden {
			return true
		}
	}
	return false
}

// flagRe finds a flag a program of the repository defines: fs.String("listen", ...
var flagRe = regexp.MustCompile(`\.(?:String|Duration|Bool|Int|Var|DurationVar|StringVar|BoolVar|IntVar)\((?:[^,]+, )?"([a-z0-9-]+)"`)

// checkProgramArgs checks that each --flag of args is a flag prog defines.
func checkProgramArgs(src string, args []string) error {
	defined := map[string]bool{}
	for _, m := range flagRe.FindAllStringSubmatch(src, -1) {
		defined[m[1]] = true
	}
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !defined[name] {
			return errors.New("no flag --" + name)
		}
	}
	return nil
}

// listenPort finds the port a service listens on: its --listen flag, its
// LISTEN variable, else the program's LISTEN default.
func listenPort(s composeService, src string) string {
	for i, a := range s.Command {
		if a == "--listen" && i+1 < len(s.Command) {
			_, p, _ := strings.Cut(s.Command[i+1], ":")
			return p
		}
	}
	if l := s.Environment["LISTEN"]; l != "" {
		_, p, _ := strings.Cut(l, ":")
		return p
	}
	if m := regexp.MustCompile(`getenv\("LISTEN", ":(\d+)"\)`).FindStringSubmatch(src); m != nil {
		return m[1]
	}
	return ""
}

// TestDockerCompose checks that docker-compose.yml starts what it says
// without a Docker engine: one service builds the image and every other
// one of ours reuses it; each entrypoint is a program the Dockerfile
// builds; commands, flags, health checks and environment variables are
// ones those programs have; the ports published are the ones they listen
// on; and depends_on waits only on services that have a health check.
func TestDockerCompose(t *testing.T) {
	cf := readCompose(t)
	for _, want := range []string{"redis", "refresher", "issuer", "peruser"} {
		if _, ok := cf.Services[want]; !ok {
			t.Errorf("no %q service", want)
		}
	}

	// One build, one image name.
	var builder string
	for name, s := range cf.Services {
		if s.Build != nil {
			if builder != "" {
				t.Errorf("services %q and %q both build: build the image once and reuse it", builder, name)
			}
			builder = name
		}
	}
	if builder == "" {
		t.Fatal("no service builds the image")
	}
	b := cf.Services[builder]
	if b.Image == "" {
		t.Fatalf("%s builds without naming the image (image:), so the others cannot reuse it", builder)
	}
	ctxDir := filepath.Join(repoRoot, b.Build.Context)
	if st, err := os.Stat(ctxDir); err != nil || !st.IsDir() {
		t.Fatalf("build context %q is not a directory", b.Build.Context)
	}
	df := b.Build.Dockerfile
	if df == "" {
		df = "Dockerfile"
	}
	img := readImage(t, ctxDir, df)

	backends := 0
	for name, s := range cf.Services {
		t.Run(name, func(t *testing.T) {
			if s.Image != b.Image {
				if s.Image == "" || len(s.Entrypoint) > 0 {
					t.Fatalf("image %q with entrypoint %v: our programs run the image %q", s.Image, s.Entrypoint, b.Image)
				}
				return // a third-party image (redis)
			}
			for dep, d := range s.DependsOn {
				ds, ok := cf.Services[dep]
				switch {
				case !ok:
					t.Errorf("depends_on %q: no such service", dep)
				case d.Condition == "service_healthy" && ds.Healthcheck == nil:
					t.Errorf("depends_on %q: service_healthy, but it has no healthcheck", dep)
				}
			}
			if len(s.Entrypoint) == 0 {
				t.Fatal("no entrypoint: say which program of the image runs")
			}
			prog := path.Base(s.Entrypoint[0])
			pkg, ok := img.programs[prog]
			if !ok || s.Entrypoint[0] != "/usr/local/bin/"+prog {
				t.Fatalf("entrypoint %q is not built into /usr/local/bin by %s (it builds %v)", s.Entrypoint[0], df, keys(img.programs))
			}
			src := programSource(t, prog, pkg)
			env := map[string]string{}
			for k, v := range s.Environment {
				env[k] = resolveCompose(v)
				if !strings.Contains(src, `"`+k+`"`) {
					t.Errorf("environment %s: %s never reads it", k, prog)
				}
			}
			switch prog {
			case "backend":
				backends++
			case "tokencache":
				if err := checkTokencacheArgs(s.Command, env); err != nil {
					t.Errorf("command %v: %v", s.Command, err)
				}
			default:
				if err := checkProgramArgs(src, s.Command); err != nil {
					t.Errorf("command %v: %v", s.Command, err)
				}
			}
			port := listenPort(s, src)
			published := false
			for _, p := range s.Ports {
				if _, container, _ := strings.Cut(p, ":"); container == port {
					published = true
				}
			}
			if port == "" || !published {
				t.Errorf("listens on port %q but publishes %v", port, s.Ports)
			}
			if s.Healthcheck == nil {
				if name == "issuer" || name == "refresher" {
					t.Fatal("no healthcheck")
				}
				return
			}
			hc := s.Healthcheck.Test
			if len(hc) < 3 || hc[0] != "CMD" || hc[1] != "/usr/local/bin/tokencache" {
				t.Fatalf("healthcheck %v: want [CMD /usr/local/bin/tokencache healthcheck ...] (the image has no shell)", hc)
			}
			if _, ok := img.programs["tokencache"]; !ok {
				t.Fatal("the image has no tokencache binary for the healthcheck")
			}
			if hc[2] != "healthcheck" {
				t.Fatalf("healthcheck %v: want the healthcheck command", hc)
			}
			if err := checkTokencacheArgs(hc[2:], env); err != nil {
				t.Errorf("healthcheck %v: %v", hc, err)
			}
			for i, a := range hc {
				if a == "--url" && i+1 < len(hc) {
					u, err := url.Parse(hc[i+1])
					if err != nil || u.Port() != port || (u.Hostname() != "127.0.0.1" && u.Hostname() != "localhost") {
						t.Errorf("healthcheck URL %q: want this container's port %s", hc[i+1], port)
					}
				}
			}
		})
	}
	if backends != 3 {
		t.Errorf("%d backend replicas, want 3", backends)
	}
}

// cronJob is the part of examples/k8s-cronjob.yaml the tests read.
type cronJob struct {
	Kind string `yaml:"kind"`
	Spec struct {
		Schedule    string `yaml:"schedule"`
		JobTemplate struct {
			Spec struct {
				Template struct {
					Spec struct {
						SecurityContext struct {
							RunAsNonRoot bool `yaml:"runAsNonRoot"`
							RunAsUser    int  `yaml:"runAsUser"`
						} `yaml:"securityContext"`
						Containers []struct {
							Image string   `yaml:"image"`
							Args  []string `yaml:"args"`
							Env   []struct {
								Name      string `yaml:"name"`
								Value     string `yaml:"value"`
								ValueFrom any    `yaml:"valueFrom"`
							} `yaml:"env"`
						} `yaml:"containers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		} `yaml:"jobTemplate"`
	} `yaml:"spec"`
}

func readCronJob(t *testing.T) cronJob {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "examples", "k8s-cronjob.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cj cronJob
	if err := yaml.Unmarshal(raw, &cj); err != nil {
		t.Fatal(err)
	}
	if cs := cj.Spec.JobTemplate.Spec.Template.Spec.Containers; cj.Kind != "CronJob" || len(cs) != 1 {
		t.Fatalf("kind %q with %d containers", cj.Kind, len(cs))
	}
	return cj
}

// TestK8sCronJob checks that the example CronJob runs a real subcommand
// with flags it has, reads secrets from a Secret, sets only variables the
// command reads, and asks for a non-root user the image can satisfy.
func TestK8sCronJob(t *testing.T) {
	cj := readCronJob(t)
	pod := cj.Spec.JobTemplate.Spec.Template.Spec
	c := pod.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "refresh" {
		t.Fatalf("args %v: want refresh", c.Args)
	}
	env := map[string]string{}
	src := programSource(t, "tokencache", "cmd/tokencache")
	for _, e := range c.Env {
		if _, secret := secretEnv[e.Name]; secret {
			if e.Value != "" || e.ValueFrom == nil {
				t.Errorf("%s: use a secretKeyRef, not a literal value", e.Name)
			}
			continue
		}
		env[e.Name] = e.Value
		if !strings.Contains(src, `"`+e.Name+`"`) {
			t.Errorf("env %s: tokencache never reads it", e.Name)
		}
	}
	if err := checkTokencacheArgs(c.Args, env); err != nil {
		t.Errorf("args %v: %v", c.Args, err)
	}
	img := readImage(t, repoRoot, "Dockerfile")
	sc := pod.SecurityContext
	if !sc.RunAsNonRoot {
		t.Error("runAsNonRoot is not set")
	}
	if sc.RunAsUser != 0 && img.user != "" && !strings.HasPrefix(img.user+":", strconv.Itoa(sc.RunAsUser)+":") {
		t.Errorf("runAsUser %d, but the image's USER is %s", sc.RunAsUser, img.user)
	}
	if sc.RunAsNonRoot && sc.RunAsUser == 0 && !numericUser(img.user) {
		t.Errorf("runAsNonRoot with the image's USER %q: the kubelet refuses a non-numeric user", img.user)
	}
}

// hostPort returns the host side of a compose port mapping
// ("127.0.0.1:6380:6379" → "127.0.0.1", "6380"; "8081:8081" → "", "8081").
func hostPort(mapping string) (ip, port string) {
	parts := strings.Split(mapping, ":")
	switch len(parts) {
	case 3:
		return parts[0], parts[1]
	case 2:
		return "", parts[0]
	}
	return "", mapping
}

// TestComposeRedisOnLoopbackOnly checks that docker-compose publishes
// Redis, which has no password there, on 127.0.0.1 only and not on 6379,
// where a local Redis would already listen.
func TestComposeRedisOnLoopbackOnly(t *testing.T) {
	cf := readCompose(t)
	for _, p := range cf.Services["redis"].Ports {
		ip, port := hostPort(p)
		if ip != "127.0.0.1" || port == "6379" {
			t.Errorf("redis publishes %q: want 127.0.0.1 and another port than 6379, or nothing", p)
		}
	}
}

// TestExamplePortsDoNotClash checks that a port means one program: each
// example's default LISTEN port is, in docker-compose, published only by
// a service that runs that same example, so the README's and the
// examples' curl lines reach the program they name.
func TestExamplePortsDoNotClash(t *testing.T) {
	cf := readCompose(t)
	defaults := map[string]string{} // port -> example
	for _, ex := range []string{"backend", "peruser"} {
		src := readRepo(t, filepath.Join("examples", ex, "main.go"))
		m := regexp.MustCompile(`getenv\("LISTEN", ":(\d+)"\)`).FindStringSubmatch(src)
		if m == nil {
			t.Fatalf("examples/%s: no default LISTEN port", ex)
		}
		if other, ok := defaults[m[1]]; ok {
			t.Errorf("examples/%s and examples/%s both listen on :%s by default", ex, other, m[1])
		}
		defaults[m[1]] = ex
	}
	for name, s := range cf.Services {
		prog := ""
		if len(s.Entrypoint) > 0 {
			prog = path.Base(s.Entrypoint[0])
		}
		for _, p := range s.Ports {
			_, port := hostPort(p)
			if ex, ok := defaults[port]; ok && prog != ex {
				t.Errorf("port %s is examples/%s's default, but compose publishes it for %s (%s)", port, ex, name, cmp.Or(prog, s.Image))
			}
		}
	}
}
