package cli

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokencache/tokencache/internal/testutil"
)

// writeFileAtomic replaces path's content as a careful writer does: a new
// file renamed over the old.
func writeFileAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// countLines counts the log lines holding every one of parts.
func countLines(log string, parts ...string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		all := l != ""
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			n++
		}
	}
	return n
}

// TestWatchedSecretKeepsTheOldValueOnABadFile: a changed file is picked up;
// an empty or unreadable one keeps the previous value and is logged once,
// naming the file and never its content, until it changes again or a
// SIGHUP asks again; a good file after a bad one is picked up.
func TestWatchedSecretKeepsTheOldValueOnABadFile(t *testing.T) {
	const first, second, third = "first-SECRET-0123456789", "second-SECRET-0123456789", "third-SECRET-0123456789"
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	writeFileAtomic(t, path, first+"\n")
	a := &app{g: globals{getenv: func(string) string { return "" }}}
	w, err := a.secretValue(path, EnvBasiqAPIKey, "the API key", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs testutil.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	reload := func(force bool) bool { t.Helper(); return w.reload(log, force) }

	if reload(false) || w.get() != first {
		t.Fatalf("unchanged file: changed, or value %q", w.get())
	}
	writeFileAtomic(t, path, second)
	if !reload(false) || w.get() != second {
		t.Fatal("changed file: not picked up")
	}
	if n := countLines(logs.String(), "secret file re-read", "file="+path); n != 1 {
		t.Errorf("%d re-read lines naming the file, want 1:\n%s", n, logs.String())
	}

	for i, bad := range []struct {
		name, content string
		remove        bool
		line          string
	}{
		{name: "empty", content: " \n", line: "the secret file is unusable"},
		{name: "unreadable", remove: true, line: "cannot read the secret file"},
	} {
		before := logs.String()
		if bad.remove {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		} else {
			writeFileAtomic(t, path, bad.content)
		}
		for range 3 { // polls see it once
			if reload(false) {
				t.Errorf("%s file: reported a change", bad.name)
			}
		}
		if w.get() != second {
			t.Errorf("%s file: the value changed", bad.name)
		}
		added := strings.TrimPrefix(logs.String(), before)
		if n := countLines(added, bad.line, "file="+path); n != 1 || strings.Count(added, "\n") != 1 {
			t.Errorf("%s file: want one line naming the file, got:\n%s", bad.name, added)
		}
		reload(true) // SIGHUP: says so again
		if n := countLines(strings.TrimPrefix(logs.String(), before), bad.line); n != 2 {
			t.Errorf("%s file: a forced reload logged %d lines in all, want 2", bad.name, n)
		}
		if i == 0 {
			writeFileAtomic(t, path, second) // back to the value in use: nothing to say
			if reload(false) {
				t.Error("back to the value in use: reported a change")
			}
		}
	}
	writeFileAtomic(t, path, third)
	if !reload(false) || w.get() != third {
		t.Fatal("a good file after a bad one: not picked up")
	}
	for _, s := range []string{first, second, third} {
		if strings.Contains(logs.String(), s) {
			t.Fatal("a log line holds the secret")
		}
		if !strings.Contains(a.scrub("x "+s), "[redacted]") {
			t.Error("a secret read is not scrubbed from messages")
		}
	}
}

// TestWatchedSecretFollowsASymlinkSwap: a Kubernetes secret volume updates
// by pointing a "..data" link at a new directory; the file's own link and
// its modification time may not change, its content does.
func TestWatchedSecretFollowsASymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []struct{ sub, val string }{{"ts1", "key-one-0123456789"}, {"ts2", "key-two-0123456789"}} {
		if err := os.Mkdir(filepath.Join(dir, v.sub), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, v.sub, "api-key"), []byte(v.val), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target string) {
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	link("ts1")
	path := filepath.Join(dir, "api-key")
	if err := os.Symlink(filepath.Join("..data", "api-key"), path); err != nil {
		t.Fatal(err)
	}
	a := &app{g: globals{getenv: func(string) string { return "" }}}
	w, err := a.secretValue(path, EnvBasiqAPIKey, "the API key", true, nil)
	if err != nil || w.get() != "key-one-0123456789" {
		t.Fatalf("got %v, %v", w, err)
	}
	link("ts2")
	if !w.reload(slog.New(slog.DiscardHandler), false) || w.get() != "key-two-0123456789" {
		t.Fatalf("after the swap: value %q, want the new one", w.get())
	}
}
