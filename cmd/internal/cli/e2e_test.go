package cli

// End-to-end tests: they build the tokencache binary once and run it, as
// separate processes, against a real redis-server (internal/redistest;
// skipped without it unless TOKENCACHE_REQUIRE_REDIS=1) and a fake issuer.

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/securitytest"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// e2eAPIKey and e2eClientSecret are the fake issuer's credentials:
// distinctive, so that a leak anywhere in any output is found by a
// substring search.
const (
	e2eAPIKey       = "sk-e2e-SECRET-7f3a9c1e5b"
	e2eClientSecret = "cs-e2e-SECRET-2d8b4f6a0c"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binary builds cmd/tokencache once per test run.
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "tokencache-e2e-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "tokencache")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/tokencache/tokencache/cmd/tokencache").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// world is one test's Redis, issuer and outputs (all scanned for secrets).
type world struct {
	t      *testing.T
	bin    string
	redis  *redistest.Server
	issuer *issuertest.Server
	ns     string

	mu      sync.Mutex // guards outputs
	outputs []string
}

func newWorld(t *testing.T, latency time.Duration) *world {
	t.Helper()
	return newWorldOn(t, redistest.Start(t), latency)
}

// newWorldOn is newWorld on a given server (a TLS one, say).
func newWorldOn(t *testing.T, srv *redistest.Server, latency time.Duration) *world {
	t.Helper()
	w := &world{t: t, redis: srv, bin: binary(t), ns: "e2e"}
	w.issuer = issuertest.RunT(t,
		issuertest.WithAPIKey(e2eAPIKey),
		issuertest.WithClientSecret(e2eClientSecret),
		issuertest.WithLatency(latency))
	t.Cleanup(w.checkNoSecrets)
	return w
}

func (w *world) env(extra ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		EnvRedisURL + "=" + w.redis.URL(),
		EnvNamespace + "=" + w.ns,
		EnvIssuerURL + "=" + w.issuer.URL(),
		EnvBasiqAPIKey + "=" + e2eAPIKey,
		EnvLogLevel + "=debug",
	}
	return append(env, extra...)
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs the binary to completion.
func (w *world) run(env []string, args ...string) result {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.bin, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		w.t.Fatalf("run %v: %v", args, err)
	}
	w.record(out.String(), errb.String())
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

func (w *world) record(s ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.outputs = append(w.outputs, s...)
}

func (w *world) checkNoSecrets() {
	w.mu.Lock()
	defer w.mu.Unlock()
	var scan securitytest.Scanner
	scan.Add(w.t, "the API key", e2eAPIKey)
	scan.Add(w.t, "the client secret", e2eClientSecret)
	for i, s := range w.outputs {
		// Named by position and fingerprint: a failure message must not
		// print the secret either.
		scan.Check(w.t, fmt.Sprintf("output %d (%d bytes)", i, len(s)), s)
	}
}

// correlationRE finds the correlationId of a Basiq error in a message.
var correlationRE = regexp.MustCompile(`correlationId [0-9a-f]+`)

var refreshLineRE = regexp.MustCompile(`^key=tokencache:\{e2e\}:server generation=\d+ expires_in=\S+ ttl=\S+ refreshed=(true|false)\n$`)

func TestE2EConcurrentRefreshOneIssuerCall(t *testing.T) {
	w := newWorld(t, 100*time.Millisecond)
	const n = 10
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = w.run(w.env(), "refresh")
		}()
	}
	wg.Wait()
	refreshed := 0
	for i, r := range results {
		if r.code != 0 {
			t.Fatalf("refresh %d: exit %d\nstdout %s\nstderr %s", i, r.code, r.stdout, r.stderr)
		}
		m := refreshLineRE.FindStringSubmatch(r.stdout)
		if m == nil {
			t.Fatalf("refresh %d: status line %q does not match %v", i, r.stdout, refreshLineRE)
		}
		if m[1] == "true" {
			refreshed++
		}
	}
	if got := w.issuer.Stats().TokenCalls; got != 1 {
		t.Errorf("issuer calls = %d, want 1", got)
	}
	if refreshed != 1 {
		t.Errorf("%d processes say they refreshed, want 1", refreshed)
	}

	// Fresh enough: nothing to do. Forced: one more call.
	if r := w.run(w.env(), "refresh", "--min-ttl", "10m"); r.code != 0 || !strings.Contains(r.stdout, "refreshed=false") {
		t.Errorf("refresh with a fresh token: %+v", r)
	}
	if r := w.run(w.env(), "refresh", "--force"); r.code != 0 || !strings.Contains(r.stdout, "refreshed=true generation") && !strings.HasSuffix(r.stdout, "refreshed=true\n") {
		t.Errorf("forced refresh: %+v", r)
	}
	if got := w.issuer.Stats().TokenCalls; got != 2 {
		t.Errorf("issuer calls after --force = %d, want 2", got)
	}
}

func TestE2EExitCodes(t *testing.T) {
	w := newWorld(t, 0)
	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{{}, {"nope"}, {"get", "--api-key=" + e2eAPIKey}, {"refresh", "--min-ttl", "x"}} {
			r := w.run(w.env(), args...)
			if r.code != 2 {
				t.Errorf("%v: exit %d, want 2 (%s)", args, r.code, r.stderr)
			}
			if lines := strings.Count(strings.TrimSpace(r.stderr), "\n") + 1; lines != 1 || !strings.HasPrefix(r.stderr, "tokencache: ") {
				t.Errorf("%v: want one line on stderr, got %q", args, r.stderr)
			}
		}
	})
	t.Run("wrong API key", func(t *testing.T) {
		wrong := "sk-wrong-SECRET-0000000001"
		env := append(w.env(), EnvBasiqAPIKey+"="+wrong, EnvNamespace+"=wrongkey")
		r := w.run(env, "get")
		if r.code != 1 {
			t.Fatalf("exit %d, want 1: %s", r.code, r.stderr)
		}
		// issuertest answers a wrong key as Basiq does: 401 invalid-client
		// with a correlationId.
		for _, want := range []string{"401", "invalid-client", w.issuer.URL()} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q: %s", want, r.stderr)
			}
		}
		if !correlationRE.MatchString(r.stderr) {
			t.Errorf("stderr lacks the issuer's correlationId: %s", r.stderr)
		}
		if strings.Contains(r.stdout+r.stderr, wrong) {
			t.Errorf("the wrong key leaked: %s %s", r.stdout, r.stderr)
		}
		r = w.run(env, "refresh")
		if r.code != 1 || !strings.Contains(r.stderr, "invalid-client") || strings.Contains(r.stdout+r.stderr, wrong) {
			t.Errorf("refresh with a wrong key: %+v", r)
		}
	})
	t.Run("redis down", func(t *testing.T) {
		port, err := redistest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		before := w.issuer.Stats().TokenCalls
		for _, cmd := range []string{"get", "refresh", "inspect", "invalidate"} {
			r := w.run(append(w.env(), EnvRedisURL+"=redis://"+addr+"/0"), cmd)
			if r.code != 1 || !strings.Contains(r.stderr, addr) {
				t.Errorf("%s with redis down: exit %d, stderr %q; want 1 naming %s", cmd, r.code, r.stderr, addr)
			}
		}
		if got := w.issuer.Stats().TokenCalls - before; got != 0 {
			t.Errorf("issuer called %d times while Redis was down", got)
		}
	})
}

func TestE2EGetInspectInvalidate(t *testing.T) {
	w := newWorld(t, 0)
	r := w.run(w.env(), "get")
	if r.code != 0 {
		t.Fatalf("get: %+v", r)
	}
	tok := strings.TrimSpace(r.stdout)
	if tok == "" || strings.ContainsAny(tok, " \n") || !w.issuer.Valid(tok) {
		t.Fatalf("get printed %q, not a token the issuer minted", r.stdout)
	}
	if r := w.run(w.env(), "get", "--header"); r.stdout != "Authorization: Bearer "+tok+"\n" {
		t.Errorf("get --header printed %q", r.stdout)
	}

	for _, tc := range []struct{ name, flag string }{{"table", ""}, {"json", "--json"}} {
		args := []string{"inspect"}
		if tc.flag != "" {
			args = append(args, tc.flag)
		}
		r := w.run(w.env(EnvLogLevel+"=warn"), args...)
		if r.code != 0 {
			t.Fatalf("inspect %s: %+v", tc.flag, r)
		}
		if strings.Contains(r.stdout+r.stderr, tok) {
			t.Errorf("inspect %s shows the token", tc.flag)
		}
		golden(t, filepath.Join("testdata", "TestE2EInspect", tc.name+".golden"), normalize(r.stdout))
	}

	r = w.run(w.env(), "invalidate")
	if r.code != 0 || !strings.Contains(r.stdout, "invalidated=true") {
		t.Fatalf("invalidate: %+v", r)
	}
	r = w.run(w.env(), "inspect")
	if r.code != 0 || !strings.Contains(r.stdout, "no token cached") {
		t.Errorf("inspect after invalidate: %+v", r)
	}
	r = w.run(w.env(), "invalidate")
	if r.code != ExitNothingDeleted || !strings.Contains(r.stdout, "invalidated=false") || !strings.Contains(r.stdout, "no token cached") || r.stderr != "" {
		t.Errorf("invalidate with nothing cached: %+v, want exit %d, \"no token cached\" and nothing on stderr", r, ExitNothingDeleted)
	}
	if r := w.run(w.env(), "get"); r.code != 0 || strings.TrimSpace(r.stdout) == tok {
		t.Errorf("get after invalidate should fetch a new token: %+v", r)
	}
	if got := w.issuer.Stats().TokenCalls; got != 2 {
		t.Errorf("issuer calls = %d, want 2", got)
	}
}

func TestE2EClientToken(t *testing.T) {
	w := newWorld(t, 0)
	user := []string{"--scope", "CLIENT_ACCESS", "--user-id", "u-42"}
	r := w.run(w.env(), append([]string{"get"}, user...)...)
	if r.code != 0 || !w.issuer.Valid(strings.TrimSpace(r.stdout)) {
		t.Fatalf("get client token: %+v", r)
	}
	r = w.run(w.env(), append([]string{"inspect"}, user...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "tokencache:{e2e/u-42}:client") || !strings.Contains(r.stdout, "valid") {
		t.Errorf("inspect client token: %+v", r)
	}
	r = w.run(w.env(), "inspect")
	if r.code != 0 || !strings.Contains(r.stdout, "no token cached") {
		t.Errorf("the server token should be untouched: %+v", r)
	}
	r = w.run(w.env(), append([]string{"refresh"}, user...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "refreshed=false") {
		t.Errorf("refresh client token: %+v", r)
	}
	if got := w.issuer.Stats().TokenCalls; got != 1 {
		t.Errorf("issuer calls = %d, want 1", got)
	}
}

// jwtRE matches a compact JWS: three base64url segments.
var jwtRE = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`)

func TestE2EJWTProvider(t *testing.T) {
	w := newWorld(t, 0)
	jwt := func(extra ...string) []string {
		env := append(w.env(), EnvProvider+"=jwt", EnvNamespace+"=jwt")
		for _, kv := range w.issuer.Env() {
			// TOKENCACHE_API_KEY and TOKENCACHE_CLIENT_SECRET (the issuer
			// URL and the Basiq key are set already).
			if strings.HasPrefix(kv, EnvAPIKey+"=") || strings.HasPrefix(kv, EnvClientSecret+"=") {
				env = append(env, kv)
			}
		}
		return append(env, extra...)
	}

	r := w.run(jwt(), "get")
	if r.code != 0 {
		t.Fatalf("get: %+v", r)
	}
	tok := strings.TrimSpace(r.stdout)
	if !jwtRE.MatchString(tok) || !w.issuer.Valid(tok) {
		t.Fatalf("get printed %q, not a JWT the issuer minted", r.stdout)
	}
	if r := w.run(jwt(), "get", "--header"); r.code != 0 || r.stdout != "Authorization: Bearer "+tok+"\n" {
		t.Errorf("get --header: %+v", r)
	}
	r = w.run(jwt(EnvLogLevel+"=warn"), "inspect")
	if r.code != 0 || !strings.Contains(r.stdout, "tokencache:{jwt}:server") || !strings.Contains(r.stdout, "valid") || strings.Contains(r.stdout, tok) {
		t.Errorf("inspect: %+v", r)
	}
	st := w.issuer.Stats()
	if st.AuthenticateCalls != 1 || st.TokenCalls != 0 {
		t.Errorf("issuer saw %d /authenticate and %d /token calls, want 1 and 0", st.AuthenticateCalls, st.TokenCalls)
	}

	t.Run("wrong client secret", func(t *testing.T) {
		wrong := "cs-wrong-SECRET-9e1d3c5b7a"
		env := jwt(EnvClientSecret+"="+wrong, EnvNamespace+"=jwt-wrong")
		for _, cmd := range []string{"get", "refresh"} {
			r := w.run(env, cmd)
			if r.code != 1 {
				t.Errorf("%s: exit %d, want 1: %s", cmd, r.code, r.stderr)
			}
			if r.stdout != "" && cmd == "get" {
				t.Errorf("get printed %q on failure", r.stdout)
			}
			if !strings.Contains(r.stderr, "401") {
				t.Errorf("%s: stderr does not give the issuer's status 401: %s", cmd, r.stderr)
			}
			if strings.Contains(r.stdout+r.stderr, wrong) {
				t.Errorf("%s: the wrong client secret leaked: %s %s", cmd, r.stdout, r.stderr)
			}
		}
		if got := w.issuer.Stats().AuthenticateCalls; got < 2 {
			t.Errorf("the issuer saw %d /authenticate calls; the wrong secret never reached it", got)
		}
	})
}

var normalizers = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`), "<time>"},
	{regexp.MustCompile(`sha256:[0-9a-f]{16}`), "sha256:<fp>"},
	{regexp.MustCompile(`"refreshed_by": "[^"]*"`), `"refreshed_by": "<host>/<pid>"`},
	{regexp.MustCompile(`(REFRESHED BY +)\S+`), "${1}<host>/<pid>"},
	{regexp.MustCompile(`("(?:expires_in_seconds|ttl_seconds)": )[0-9.]+`), "${1}<seconds>"},
	{regexp.MustCompile(`\b(\d+h)?(\d+m)?\d+(\.\d+)?(ms|s)\b`), "<duration>"},
}

// normalize replaces what changes from run to run: times, durations,
// fingerprints of random tokens, host and pid.
func normalize(s string) string {
	for _, n := range normalizers {
		s = n.re.ReplaceAllString(s, n.with)
	}
	return s
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it)\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestE2EDemo(t *testing.T) {
	bin := binary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"replicas served   20 of 20", "distinct tokens   1", "issuer calls      1", "wait p50 / p99", "redis-cli", "GET 'tokencache:{demo}:server'"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

func TestE2EDaemon(t *testing.T) {
	w := newWorld(t, 50*time.Millisecond)
	type daemonProc struct {
		cmd  *exec.Cmd
		out  *lockedBuffer
		base string
		done chan error
	}
	start := func() *daemonProc {
		port, err := redistest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		d := &daemonProc{out: &lockedBuffer{}, base: "http://127.0.0.1:" + strconv.Itoa(port), done: make(chan error, 1)}
		d.cmd = exec.Command(w.bin, "daemon", "--listen", "127.0.0.1:"+strconv.Itoa(port), "--interval", "200ms")
		d.cmd.Env = w.env(EnvLogFormat + "=json")
		d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
		if err := d.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { d.done <- d.cmd.Wait() }()
		t.Cleanup(func() {
			_ = d.cmd.Process.Kill()
			w.record(d.out.String())
		})
		return d
	}
	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// waitFor polls until f is true; the bound only catches a hang.
	waitFor := func(what string, f func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !f() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	d1, d2 := start(), start()
	for _, d := range []*daemonProc{d1, d2} {
		waitFor("/healthz", func() bool { c, _ := get(d.base + "/healthz"); return c == 200 })
		waitFor("/readyz", func() bool { c, _ := get(d.base + "/readyz"); return c == 200 })
	}
	if got := w.issuer.Stats().TokenCalls; got != 1 {
		t.Errorf("two daemons made %d issuer calls, want 1", got)
	}
	_, metrics := get(d1.base + "/metrics")
	_, metrics2 := get(d2.base + "/metrics")
	w.record(metrics, metrics2)
	both := metrics + metrics2
	for _, want := range []string{
		`tokencache_issuer_requests_total{namespace="e2e",result="ok"} 1`,
		"tokencache_issuer_request_duration_seconds_bucket",
		"tokencache_token_ttl_seconds",
		"tokencache_redis_errors_total",
		"tokencache_lock_waits_total",
		`tokencache_token_requests_total{namespace="e2e",tier=`,
	} {
		if !strings.Contains(both, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	for _, d := range []*daemonProc{d1, d2} {
		if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-d.done:
			if err != nil {
				t.Errorf("daemon exit after SIGTERM: %v\n%s", err, d.out.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("daemon did not exit after SIGTERM\n%s", d.out.String())
		}
		if !strings.Contains(d.out.String(), "tokencache daemon stopped") {
			t.Errorf("no clean-stop log:\n%s", d.out.String())
		}
	}
}

func TestE2EEncryptionAtRest(t *testing.T) {
	w := newWorld(t, 0)
	const key1 = "ZW5jcnlwdGlvbi1rZXktb25lLTMyLWJ5dGVzLWxvbmc=" // 32 bytes
	const key2 = "c2Vjb25kLWVuY3J5cHRpb24ta2V5LTMyLWJ5dGVzISE=" // 32 bytes
	enc := w.env(EnvEncryptionKeys + "=k1:" + key1)
	r := w.run(enc, "get")
	if r.code != 0 {
		t.Fatalf("get with encryption: exit %d\n%s", r.code, r.stderr)
	}
	tok := strings.TrimSpace(r.stdout)
	raw, err := w.redis.Client(t).Get(context.Background(), "tokencache:{e2e}:server").Result()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(raw, tok) || !strings.Contains(raw, `"key_id":"k1"`) {
		t.Fatalf("the stored value is not encrypted with k1: %s", raw)
	}
	r = w.run(enc, "inspect")
	if r.code != 0 || !strings.Contains(r.stdout, "key id k1") {
		t.Errorf("inspect of an encrypted token: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// A replica without k1 names the key id it lacks, and exits 1.
	r = w.run(w.env(EnvEncryptionKeys+"=k2:"+key2), "get")
	if r.code != 1 || !strings.Contains(r.stderr, `"k1"`) || strings.Contains(r.stdout, tok) {
		t.Errorf("get without the key: exit %d, want 1 naming key id k1\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Keys never on the command line.
	r = w.run(w.env(), "get", "--encryption-keys=k1:"+key1)
	if r.code != 2 || strings.Contains(r.stderr, key1) {
		t.Errorf("--encryption-keys as a flag: exit %d, want 2 without echoing it\n%s", r.code, r.stderr)
	}
	for _, out := range []string{r.stdout, r.stderr} {
		if strings.Contains(out, key1) || strings.Contains(out, key2) {
			t.Errorf("key material in the output: %s", out)
		}
	}
}
