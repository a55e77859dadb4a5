package cli

import (
	"bytes"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestWriteVersionFromBuildInfo(t *testing.T) {
	tests := []struct {
		name string
		info *debug.BuildInfo
		ok   bool
		want string
	}{
		{
			name: "a release build from a modified checkout",
			info: &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/tokencache/tokencache/cmd", Version: "v1.4.0"},
				Settings: []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "3f2a9c1e"}, {Key: "vcs.time", Value: "2026-12-05T12:00:00Z"}, {Key: "vcs.modified", Value: "true"}}},
			ok:   true,
			want: "tokencache v1.4.0\nrevision 3f2a9c1e (modified)\ntime 2026-12-05T12:00:00Z\ngo go1.26.0\n",
		},
		{
			name: "a clean checkout",
			info: &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.0.0-20261205120000-3f2a9c1e0b7d"},
				Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "3f2a9c1e0b7d"}, {Key: "vcs.time", Value: "2026-12-05T12:00:00Z"}, {Key: "vcs.modified", Value: "false"}}},
			ok:   true,
			want: "tokencache v0.0.0-20261205120000-3f2a9c1e0b7d\nrevision 3f2a9c1e0b7d\ntime 2026-12-05T12:00:00Z\ngo go1.26.0\n",
		},
		{
			name: "no VCS information (-buildvcs=false, go run)",
			info: &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}},
			ok:   true,
			want: "tokencache (devel)\nrevision unknown\ntime unknown\ngo go1.26.0\n",
		},
		{name: "no build information", want: "tokencache unknown\nrevision unknown\ntime unknown\ngo unknown\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			writeVersion(&b, tt.info, tt.ok)
			if b.String() != tt.want {
				t.Errorf("got\n%s\nwant\n%s", b.String(), tt.want)
			}
		})
	}
}

// TestVersionCommandAndFlag: "version" and "--version" (before or after
// global flags) print the same, the Go line is this toolchain's, and
// neither reads Redis or credentials.
func TestVersionCommandAndFlag(t *testing.T) {
	var outs []string
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}, {"--redis", "redis://127.0.0.1:1/0", "--version"}} {
		out, _, err := runArgs(t, nil, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		outs = append(outs, out)
	}
	for i, o := range outs[1:] {
		if o != outs[0] {
			t.Errorf("output %d differs:\n%s\nfrom:\n%s", i+1, o, outs[0])
		}
	}
	if !strings.HasPrefix(outs[0], "tokencache ") || !strings.HasSuffix(outs[0], "\ngo "+runtime.Version()+"\n") {
		t.Errorf("got %q, want the four lines ending in this Go version", outs[0])
	}
	if _, _, err := runArgs(t, nil, "version", "extra"); ExitCode(err) != ExitUsage {
		t.Errorf("version extra: %v, want a usage error", err)
	}
	if out, _, _ := runArgs(t, nil, "-h"); !strings.Contains(out, "version") {
		t.Errorf("the usage does not list version:\n%s", out)
	}
}

// TestE2EVersionMatchesTheBuildInfo: the built binary's --version says
// what "go version -m" reads from it.
func TestE2EVersionMatchesTheBuildInfo(t *testing.T) {
	bin := binary(t)
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	meta, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"vcs.revision": "unknown", "vcs.time": "unknown"}
	var goVersion, modVersion string
	for i, l := range strings.Split(string(meta), "\n") {
		f := strings.Fields(l)
		switch {
		case i == 0 && len(f) == 2:
			goVersion = f[1]
		case len(f) >= 3 && f[0] == "mod":
			modVersion = f[2]
		case len(f) == 2 && f[0] == "build":
			if k, v, ok := strings.Cut(f[1], "="); ok {
				want[k] = v
			}
		}
	}
	rev := want["vcs.revision"]
	if want["vcs.modified"] == "true" {
		rev += " (modified)"
	}
	expect := "tokencache " + modVersion + "\nrevision " + rev + "\ntime " + want["vcs.time"] + "\ngo " + goVersion + "\n"
	if string(out) != expect {
		t.Errorf("--version:\n%s\nwant (from go version -m):\n%s", out, expect)
	}
}
