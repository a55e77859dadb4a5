package cli

import (
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/securitytest"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// daemonRun is a daemon process started by startDaemon.
type daemonRun struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	base string
	done chan error
}

// startDaemon starts "tokencache daemon" with env on a free port and
// waits until /readyz answers 200; the process is killed at cleanup if it
// is still running. Its output is recorded.
func (w *world) startDaemon(env []string) *daemonRun {
	w.t.Helper()
	port, err := redistest.FreePort()
	if err != nil {
		w.t.Fatal(err)
	}
	d := &daemonRun{out: &lockedBuffer{}, base: "http://127.0.0.1:" + strconv.Itoa(port), done: make(chan error, 1)}
	d.cmd = exec.Command(w.bin, "daemon", "--listen", "127.0.0.1:"+strconv.Itoa(port), "--interval", "200ms")
	d.cmd.Env = env
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	w.t.Cleanup(func() { _ = d.cmd.Process.Kill() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, _ := w.httpGet(d.base + "/readyz")
		if code == http.StatusOK {
			return d
		}
		if time.Now().After(deadline) {
			w.record(d.out.String())
			w.t.Fatalf("daemon: /readyz never answered 200 (last %d)", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM, waits for a clean exit, and records the output.
func (d *daemonRun) stop(w *world) string {
	w.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		w.t.Fatal(err)
	}
	select {
	case err := <-d.done:
		if err != nil {
			w.t.Errorf("daemon exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		w.t.Errorf("daemon did not exit after SIGTERM")
	}
	out := d.out.String()
	w.record(out)
	return out
}

// httpGet fetches url and records the body.
func (w *world) httpGet(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	w.record(string(b))
	return resp.StatusCode, string(b)
}

// TestE2EACL runs every command as the least-privilege user that docs/redis.md
// documents: get, refresh, inspect (table and JSON), invalidate, a client
// token, and the daemon up to /readyz, without a single denial in ACL LOG.
// Without +ping, the rule's one command the library does not use, the
// command fails naming the address.
func TestE2EACL(t *testing.T) {
	w := newWorld(t, 0)
	admin := w.redis.Client(t)
	rule := securitytest.ReadmeACL(t)
	securitytest.SetUser(t, admin, "tokencache", "acl-pw-3b9d1f", rule)
	url := EnvRedisURL + "=redis://tokencache:acl-pw-3b9d1f@" + w.redis.Addr + "/0"
	env := w.env(url)
	user := []string{"--scope", "CLIENT_ACCESS", "--user-id", "u-9"}
	for _, args := range [][]string{
		{"get"}, {"refresh"}, {"refresh", "--force"}, {"inspect"}, {"inspect", "--json"},
		{"invalidate"}, {"get"}, append([]string{"get"}, user...), append([]string{"invalidate"}, user...),
	} {
		if r := w.run(env, args...); r.code != 0 {
			t.Errorf("%v as the documented ACL user: exit %d\n%s", args, r.code, r.stderr)
		}
	}
	d := w.startDaemon(env)
	if code, body := w.httpGet(d.base + "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz as the documented ACL user: %d %s", code, body)
	}
	d.stop(w)
	if denied := securitytest.ACLDenials(t, admin, "tokencache"); len(denied) != 0 {
		t.Errorf("Redis denied the command: %v", denied)
	}

	securitytest.SetUser(t, admin, "tokencache", "acl-pw-3b9d1f", securitytest.Without(rule, "+ping"))
	r := w.run(env, "get")
	if r.code != 1 || !strings.Contains(r.stderr, "redis "+w.redis.Addr) || !strings.Contains(r.stderr, "NOPERM") {
		t.Errorf("get without +ping: exit %d, want 1 naming %s and NOPERM\n%s", r.code, w.redis.Addr, r.stderr)
	}
}

// TestE2ESecretScan drives every command but the demo, and the failure
// paths (a wrong key or secret, issuer 5xx that echoes the key, Redis down,
// refused and bad flags, bad key files), at debug level in text and JSON,
// with distinctive secrets; it records every output, /metrics and /readyz,
// every message published on tokencache:* and every key left in Redis,
// and looks for the API keys, the client secrets, the Redis password, the
// encryption key material and every token. A token may appear only in
// get's stdout and as the value of its own key when not encrypted.
func TestE2ESecretScan(t *testing.T) {
	w := newWorld(t, 0)
	admin := w.redis.Client(t)
	rec := securitytest.Record(t, admin, "tokencache:*")

	const (
		redisPass   = "rp-SCAN-SECRET-41c7e2a9"
		wrongKey    = "sk-wrong-SCAN-SECRET-5a1f"
		wrongSecret = "cs-wrong-SCAN-SECRET-8d2e"
		rawKey1     = "enc-key-one-SCAN-SECRET-32bytes!" // 32 bytes
		rawKey2     = "enc-key-two-SCAN-SECRET-32bytes!"
	)
	key1 := base64.StdEncoding.EncodeToString([]byte(rawKey1))
	key2 := base64.StdEncoding.EncodeToString([]byte(rawKey2))
	var scan securitytest.Scanner
	for name, v := range map[string]string{
		"API key": e2eAPIKey, "client secret": e2eClientSecret, "Redis password": redisPass,
		"wrong API key": wrongKey, "wrong client secret": wrongSecret,
		"encryption key k1 (base64)": key1, "encryption key k1 (raw)": rawKey1,
		"encryption key k2 (base64)": key2, "encryption key k2 (raw)": rawKey2,
	} {
		scan.Add(t, name, v)
	}
	securitytest.SetUser(t, admin, "tokencache", redisPass, securitytest.ReadmeACL(t))
	redisURL := EnvRedisURL + "=redis://tokencache:" + redisPass + "@" + w.redis.Addr + "/0"

	var outs []output
	tokens := map[string]bool{}
	run := func(env []string, args ...string) result {
		t.Helper()
		r := w.run(env, args...)
		where := strings.Join(args, " ")
		isGet := false
		for _, a := range args {
			isGet = isGet || a == "get"
		}
		outs = append(outs, output{where + " (stdout)", r.stdout, isGet}, output{where + " (stderr)", r.stderr, false})
		if isGet && r.code == 0 {
			tok := strings.TrimPrefix(strings.TrimSpace(r.stdout), "Authorization: Bearer ")
			tokens[tok] = true
		}
		return r
	}
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	expect := func(r result, code int, what string) {
		t.Helper()
		if r.code != code {
			t.Errorf("%s: exit %d, want %d (stderr %d bytes)", what, r.code, code, len(r.stderr))
		}
	}

	for _, format := range []string{"text", "json"} {
		base := func(extra ...string) []string {
			return w.env(append([]string{redisURL, EnvLogFormat + "=" + format, EnvNamespace + "=scan-" + format}, extra...)...)
		}
		env := base()
		user := []string{"--scope", "CLIENT_ACCESS", "--user-id", "u-scan"}

		expect(run(env, "get"), 0, "get")
		expect(run(env, "get", "--header"), 0, "get --header")
		expect(run(env, "refresh"), 0, "refresh")
		expect(run(env, "refresh", "--force"), 0, "refresh --force")
		expect(run(env, "get"), 0, "get after a forced refresh")
		expect(run(env, "refresh", "--min-ttl", "10m"), 0, "refresh --min-ttl")
		expect(run(env, "inspect"), 0, "inspect")
		expect(run(env, "inspect", "--json"), 0, "inspect --json")
		expect(run(env, append([]string{"get"}, user...)...), 0, "get a client token")
		expect(run(env, append([]string{"inspect", "--json"}, user...)...), 0, "inspect a client token")
		expect(run(env, append([]string{"invalidate"}, user...)...), 0, "invalidate a client token")
		expect(run(env, "invalidate", "--fingerprint", "sha256:0000000000000000", "--generation", "1"), ExitNothingDeleted, "invalidate another token")
		expect(run(env, "invalidate"), 0, "invalidate")
		expect(run(env, "-h"), 0, "-h")

		// Secrets from files.
		fileEnv := w.env(redisURL, EnvLogFormat+"="+format, EnvNamespace+"=scan-file-"+format)
		fileEnv = append(fileEnv, EnvBasiqAPIKey+"=")
		expect(run(fileEnv, "--api-key-file", file("key-"+format, e2eAPIKey+"\n"), "get"), 0, "get with --api-key-file")

		// Failures: a wrong key, 5xx from the issuer, one that echoes the
		// key it was sent, garbage, Redis down.
		wrong := base(EnvBasiqAPIKey+"="+wrongKey, EnvNamespace+"=scan-wrong-"+format)
		expect(run(wrong, "get"), 1, "get with a wrong key")
		expect(run(wrong, "refresh"), 1, "refresh with a wrong key")
		expect(run(wrong, "inspect", "--json"), 0, "inspect after a failure")
		w.issuer.FailAlways(issuertest.Fail(500, "internal-server-error"))
		expect(run(env, "refresh", "--force"), 1, "refresh with issuer 500")
		echo := issuertest.Fail(502, "")
		echo.Body = "<html>bad gateway: upstream refused Basic " + e2eAPIKey + "</html>"
		w.issuer.FailAlways(echo)
		expect(run(env, "refresh", "--force"), 1, "refresh with an issuer 502 echoing the key")
		w.issuer.Reset()
		port, err := redistest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		down := base(EnvRedisURL + "=redis://tokencache:" + redisPass + "@127.0.0.1:" + strconv.Itoa(port) + "/0")
		for _, cmd := range []string{"get", "refresh", "inspect", "invalidate"} {
			expect(run(down, cmd), 1, cmd+" with Redis down")
		}
		expect(run(base(EnvRedisURL+"=rediss+sentinel://:"+redisPass+"@127.0.0.1:"+strconv.Itoa(port)), "get"), 2, "a sentinel URL without master")
		expect(run(base(EnvRedisURL+"=redis://tokencache:"+redisPass+"@127.0.0.1:notaport/0"), "get"), 2, "a bad Redis URL")
		expect(run(base(EnvRedisURL+"=ftp://tokencache:"+redisPass+"@h/0"), "get"), 2, "a Redis URL of another scheme")

		// Refused and bad flags, with the secrets configured (a value that
		// is configured nowhere cannot be known to be a secret, and flag
		// errors quote the value they reject).
		secretEnv := base(EnvAPIKey+"="+e2eAPIKey, EnvClientSecret+"="+e2eClientSecret, EnvEncryptionKeys+"=k1:"+key1)
		for _, args := range [][]string{
			{"get", "--api-key=" + e2eAPIKey}, {"get", "--api-key", e2eAPIKey}, {"get", "--client-secret=" + e2eClientSecret},
			{"get", "--encryption-keys=k1:" + key1}, {"get", "--password", redisPass},
			{"get", "--nope=" + e2eAPIKey}, {"refresh", "--min-ttl", e2eAPIKey}, {"get", e2eAPIKey},
			{"daemon", "--interval", e2eClientSecret},
		} {
			expect(run(secretEnv, args...), 2, "bad flags")
		}
		expect(run(env, "--api-key-file", filepath.Join(dir, "missing-"+e2eAPIKey)), 2, "a missing key file")

		// Encryption at rest, and its failures.
		enc := base(EnvEncryptionKeys+"=k1:"+key1, EnvNamespace+"=scan-enc-"+format)
		expect(run(enc, "get"), 0, "get encrypted")
		expect(run(enc, "inspect", "--json"), 0, "inspect encrypted")
		expect(run(base(EnvEncryptionKeys+"=k2:"+key2, EnvNamespace+"=scan-enc-"+format), "get"), 1, "get without the key")
		expect(run(base(EnvEncryptionKeys+"=k1:"+rawKey1, EnvNamespace+"=scan-enc-"+format), "get"), 2, "a raw (not base64) key")
		expect(run(base(EnvNamespace+"=scan-enc-"+format), "--encryption-keys-file", file("keys-"+format, "k1 "+key1+"\n"), "get"), 2, "a malformed key file")
		expect(run(base(EnvNamespace+"=scan-enc-"+format), "--encryption-keys-file", file("keys2-"+format, "k1:"+key1+",k2:"+key2), "get"), 0, "get with a key file")

		// The jwt provider: its API key and client secret.
		jwt := base(EnvProvider+"=jwt", EnvAPIKey+"="+e2eAPIKey, EnvClientSecret+"="+e2eClientSecret, EnvNamespace+"=scan-jwt-"+format)
		expect(run(jwt, "get"), 0, "jwt get")
		expect(run(jwt, "inspect"), 0, "jwt inspect")
		jwtWrong := base(EnvProvider+"=jwt", EnvAPIKey+"="+e2eAPIKey, EnvClientSecret+"="+wrongSecret, EnvNamespace+"=scan-jwt-wrong-"+format)
		expect(run(jwtWrong, "get"), 1, "jwt get with a wrong secret")

		// The daemon: logs, /healthz, /readyz, /metrics, a clean stop.
		d := w.startDaemon(base(EnvNamespace + "=scan-daemon-" + format))
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			code, body := w.httpGet(d.base + path)
			if code != http.StatusOK {
				t.Errorf("daemon %s: %d", path, code)
			}
			outs = append(outs, output{"daemon " + path + " " + format, body, false})
		}
		expect(run(env, "healthcheck", "--url", d.base+"/readyz"), 0, "healthcheck of the daemon")
		outs = append(outs, output{"daemon logs " + format, d.stop(w), false})
		expect(run(env, "healthcheck", "--url", d.base+"/readyz", "--timeout", "5s"), 1, "healthcheck of a stopped daemon")
		expect(run(secretEnv, "healthcheck", "--url", "http://127.0.0.1:1/?k="+e2eAPIKey), 1, "healthcheck of a URL holding a secret")
		expect(run(base(EnvNamespace+"=scan-daemon-"+format), "get"), 0, "get the daemon's token")
	}
	rec.Stop()
	checkOutputs(t, &scan, tokens, 8, outs)
	msgs := rec.Messages()
	if len(msgs) == 0 {
		t.Error("no message recorded on tokencache:*")
	}
	for _, m := range msgs {
		scan.Check(t, "a message on "+m.Channel, m.Payload)
	}
	keys := securitytest.Dump(t, admin, "*")
	if len(keys) == 0 {
		t.Error("no key in Redis")
	}
	for k, v := range keys {
		plain := !strings.Contains(k, "scan-enc-") && (strings.HasSuffix(k, ":server") || strings.HasSuffix(k, ":client"))
		for _, l := range scan.Leaks("key "+k, v) {
			if plain && strings.HasPrefix(l, "token ") {
				continue
			}
			t.Error("leak: " + l)
		}
		scan.Check(t, "a key name", k)
	}
	// Everything w recorded (the daemons' output, the HTTP bodies) too.
	getStdout := map[string]bool{}
	for _, o := range outs {
		if o.tokensShown {
			getStdout[o.text] = true
		}
	}
	w.mu.Lock()
	all := append([]string(nil), w.outputs...)
	w.mu.Unlock()
	for i, out := range all {
		for _, l := range scan.Leaks("recorded output "+strconv.Itoa(i), out) {
			if !strings.HasPrefix(l, "token ") || !getStdout[out] {
				t.Error("leak: " + l)
			}
		}
	}
}

// output is one output of a command run by a secrets scan.
type output struct {
	where       string
	text        string
	tokensShown bool // the output's contract is to show a token (get's stdout, GET /v1/token)
}

// checkOutputs adds every token seen to scan, at least min of them (fewer
// would prove little), and fails the test for every secret found in outs,
// a token excepted where the output is meant to show one.
func checkOutputs(t *testing.T, scan *securitytest.Scanner, tokens map[string]bool, min int, outs []output) {
	t.Helper()
	if len(tokens) < min {
		t.Fatalf("only %d tokens seen; the scan would prove little", len(tokens))
	}
	i := 0
	for tok := range tokens {
		i++
		scan.Add(t, "token "+strconv.Itoa(i), tok)
	}
	for _, o := range outs {
		for _, l := range scan.Leaks(o.where, o.text) {
			if o.tokensShown && strings.HasPrefix(l, "token ") {
				continue
			}
			t.Error("leak: " + l)
		}
	}
}
