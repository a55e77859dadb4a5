package cli

import (
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/securitytest"
	"github.com/tokencache/tokencache/internal/testutil"
)

// TestE2EDaemonRotatesTheAPIKeyOnSIGHUP runs the built binary's daemon
// with its API key in a file, rotates the key at the issuer and in the
// file, and sends a real SIGHUP: the daemon keeps running and serving
// /readyz, its next issuer call uses the new key, and none is refused.
func TestE2EDaemonRotatesTheAPIKeyOnSIGHUP(t *testing.T) {
	const rotated = "sk-e2e-SECRET-rotated-4b6d8f0a"
	w := newWorld(t, 0)
	keyFile := filepath.Join(t.TempDir(), "api-key")
	writeFileAtomic(t, keyFile, e2eAPIKey+"\n")
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	d := &daemonRun{out: &lockedBuffer{}, base: base, done: make(chan error, 1)}
	d.cmd = exec.Command(w.bin, "daemon", "--listen", "127.0.0.1:"+strconv.Itoa(port), "--interval", "200ms",
		"--api-key-file", keyFile, "--reload-interval", "0")
	d.cmd.Env = w.env()
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() { _ = d.cmd.Process.Kill() })
	ready := func() bool { code, _ := w.httpGet(base + "/readyz"); return code == http.StatusOK }
	testutil.Eventually(t, "/readyz 200", ready)
	before := w.issuer.Stats().TokenCalls

	w.issuer.SetAPIKey(rotated)
	writeFileAtomic(t, keyFile, rotated)
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "an issuer call with the rotated key", func() bool { return w.issuer.Stats().TokenCalls > before })
	after := w.issuer.Stats().TokenCalls
	refused := 0
	for _, r := range w.issuer.Requests() {
		if !r.KeyOK {
			refused++
		}
	}
	select {
	case err := <-d.done:
		t.Fatalf("the daemon exited after SIGHUP: %v\n%s", err, d.out.String())
	default:
	}
	if !ready() {
		t.Error("/readyz is not 200 after the rotation")
	}
	t.Logf("daemon binary, SIGHUP: issuer calls %d before, %d after; refused %d", before, after, refused)
	if before != 1 || after != 2 || refused != 0 {
		t.Errorf("issuer calls %d before and %d after, %d refused; want 1, 2, 0", before, after, refused)
	}
	out := d.stop(w)
	if !strings.Contains(out, "secret file re-read") {
		t.Errorf("no log line for the re-read:\n%s", out)
	}
	if got := w.issuer.Stats().TokenCalls; got != after {
		t.Errorf("issuer calls went on to %d after the rotation, want %d", got, after)
	}
	var scan securitytest.Scanner
	scan.Add(t, "the rotated key", rotated)
	scan.Check(t, "the daemon's output", out)
}
