package cli

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/cmd/internal/localapi"
	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/securitytest"
)

// e2eListenSecret is the bearer secret of the e2e serve and proxy.
const e2eListenSecret = "listen-e2e-SECRET-9b2c7d1e4f"

// startLocal starts "tokencache serve" or "proxy" with env and args and
// waits until addr (a TCP address, or unix:PATH) accepts connections.
func (w *world) startLocal(env []string, addr string, args ...string) *daemonRun {
	w.t.Helper()
	d := &daemonRun{out: &lockedBuffer{}, done: make(chan error, 1)}
	d.cmd = exec.Command(w.bin, args...)
	d.cmd.Env = env
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	w.t.Cleanup(func() { _ = d.cmd.Process.Kill() })
	network, a := "tcp", addr
	if p, ok := localapi.SocketPath(addr); ok {
		network, a = "unix", p
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial(network, a); err == nil {
			_ = c.Close()
			return d
		}
		select {
		case err := <-d.done:
			w.record(d.out.String())
			w.t.Fatalf("%v exited early: %v\n%s", args, err, d.out.String())
		default:
		}
		if time.Now().After(deadline) {
			w.record(d.out.String())
			w.t.Fatalf("%v: %s never accepted a connection", args, addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(port)
}

// localGet sends a request with the e2e bearer secret over client.
func (w *world) localDo(client *http.Client, method, url, body, secret string) (int, string) {
	w.t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		w.t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := client.Do(req)
	if err != nil {
		w.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
}

// TestE2ENodeExample runs examples/node against "tokencache serve": the
// Basiq sample rewritten to take its tokens from the local endpoint
// creates a user with the server token (after a revocation: its 401 is
// reported once and retried) and reads it back with the user's client
// token.
func TestE2ENodeExample(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not found on PATH: the Node example is not run (install Node.js 18+ to run it)")
	}
	w := newWorld(t, 0)
	addr := freeAddr(t)
	env := w.env(EnvListenSecret + "=" + e2eListenSecret)
	d := w.startLocal(env, addr, "serve", "--listen", addr)
	base := "http://" + addr
	code, body := w.localDo(http.DefaultClient, http.MethodGet, base+localapi.TokenPath, "", e2eListenSecret)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/token: %d %s", code, body)
	}
	w.issuer.RevokeAll() // the node program's first call meets a 401

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join(repoRoot, "examples", "node", "main.mjs"))
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"TOKENCACHE_URL=" + base, EnvListenSecret + "=" + e2eListenSecret,
		"BASIQ_API_URL=" + w.issuer.URL(),
	}
	out, err := cmd.CombinedOutput()
	w.record(string(out))
	if err != nil {
		t.Fatalf("node main.mjs: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "created user ") || !strings.Contains(string(out), "back with its client token") {
		t.Errorf("node output:\n%s", out)
	}
	st := w.issuer.Stats()
	if st.ServerTokenCalls != 2 || st.ClientTokenCalls != 1 || st.Unauthorized != 1 {
		t.Errorf("issuer: %d server and %d client token calls, %d 401s; want 2, 1 and 1", st.ServerTokenCalls, st.ClientTokenCalls, st.Unauthorized)
	}
	d.stop(w)
}

// TestE2EServeRefusesAPublicAddress runs the binary: a non-loopback
// address without TLS and a secret fails to start, exit 2, one line.
func TestE2EServeRefusesAPublicAddress(t *testing.T) {
	w := newWorld(t, 0)
	for _, args := range [][]string{{"serve", "--listen", "0.0.0.0:0"}, {"proxy", "--listen", ":0"}} {
		r := w.run(w.env(EnvListenSecret+"="+e2eListenSecret), args...)
		if r.code != ExitUsage || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "non-loopback address needs both TLS and a bearer secret") {
			t.Errorf("%v: exit %d, stderr %q; want 2 and one line", args, r.code, r.stderr)
		}
	}
	if n := w.issuer.Stats().TokenCalls; n != 0 {
		t.Errorf("issuer calls: %d, want 0", n)
	}
}

// TestE2EServeAndProxySecretScan drives serve (loopback TCP with the
// bearer secret) and proxy (a Unix socket) through success and failure,
// text and JSON logs at debug level, and looks for the API key, the
// bearer secret and every token in their logs, /metrics, error answers
// and usage errors. A token may appear only in GET /v1/token's answer.
func TestE2EServeAndProxySecretScan(t *testing.T) {
	w := newWorld(t, 0)
	var scan securitytest.Scanner
	scan.Add(t, "API key", e2eAPIKey)
	scan.Add(t, "bearer secret", e2eListenSecret)
	var outs []output
	tokens := map[string]bool{}
	grab := func(body string) {
		var tr localapi.TokenResponse
		if json.Unmarshal([]byte(body), &tr) == nil && tr.AccessToken != "" {
			tokens[tr.AccessToken] = true
		}
	}
	sockDir, err := os.MkdirTemp("", "tce2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })

	for _, format := range []string{"text", "json"} {
		env := w.env(EnvListenSecret+"="+e2eListenSecret, EnvLogFormat+"="+format, EnvNamespace+"=scan-local-"+format)
		addr, metricsAddr, proxyMetrics := freeAddr(t), freeAddr(t), freeAddr(t)
		serve := w.startLocal(env, addr, "serve", "--listen", addr, "--metrics-listen", metricsAddr)
		sock := filepath.Join(sockDir, "p-"+format+".sock")
		proxy := w.startLocal(env, "unix:"+sock, "proxy", "--listen", "unix:"+sock, "--upstream", w.issuer.URL(), "--metrics-listen", proxyMetrics)
		if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("proxy socket: %v %v, want mode 0600", fi.Mode(), err)
		}
		base, pc := "http://"+addr, unixClient(sock)
		do := func(where string, c *http.Client, method, url, body, secret string, want int, tokensShown bool) string {
			t.Helper()
			code, resp := w.localDo(c, method, url, body, secret)
			if code != want {
				t.Errorf("%s: %d, want %d: %s", where, code, want, resp)
			}
			outs = append(outs, output{where + " " + format, resp, tokensShown})
			return resp
		}
		tok := do("GET /v1/token", http.DefaultClient, http.MethodGet, base+localapi.TokenPath, "", e2eListenSecret, 200, true)
		grab(tok)
		grab(do("GET /v1/token?user_id", http.DefaultClient, http.MethodGet, base+localapi.TokenPath+"?user_id=u-scan", "", e2eListenSecret, 200, true))
		do("wrong secret", http.DefaultClient, http.MethodGet, base+localapi.TokenPath, "", "wrong-"+e2eListenSecret, 401, false)
		do("no secret", http.DefaultClient, http.MethodGet, base+localapi.TokenPath, "", "", 401, false)
		do("bad user", http.DefaultClient, http.MethodGet, base+localapi.TokenPath+"?user_id=a%7B", "", e2eListenSecret, 400, false)
		do("proxy GET", pc, http.MethodGet, "http://unix/api/scan", "", e2eListenSecret, 200, false)
		w.issuer.RevokeAll()
		do("proxy GET after a revocation", pc, http.MethodGet, "http://unix/api/scan", "", e2eListenSecret, 200, false)
		var tr localapi.TokenResponse
		_ = json.Unmarshal([]byte(tok), &tr)
		do("invalidate", http.DefaultClient, http.MethodPost, base+localapi.InvalidatePath, `{"access_token":"`+tr.AccessToken+`"}`, e2eListenSecret, 200, false)
		grab(do("GET /v1/token after invalidate", http.DefaultClient, http.MethodGet, base+localapi.TokenPath, "", e2eListenSecret, 200, true))
		do("proxy POST", pc, http.MethodPost, "http://unix/api/x", `{"a":1}`, e2eListenSecret, 200, false)

		// No token to be had: a wrong key, in a namespace of its own.
		wrongEnv := w.env(EnvListenSecret+"="+e2eListenSecret, EnvLogFormat+"="+format, EnvNamespace+"=scan-local-wrong-"+format, EnvBasiqAPIKey+"=sk-wrong-SCAN-SECRET-5a1f")
		scan.Add(t, "wrong API key "+format, "sk-wrong-SCAN-SECRET-5a1f")
		waddr := freeAddr(t)
		wrong := w.startLocal(wrongEnv, waddr, "serve", "--listen", waddr)
		do("503", http.DefaultClient, http.MethodGet, "http://"+waddr+localapi.TokenPath, "", e2eListenSecret, 503, false)
		outs = append(outs, output{"wrong-key serve logs " + format, wrong.stop(w), false})

		for _, m := range []string{metricsAddr, proxyMetrics} {
			code, body := w.httpGet("http://" + m + "/metrics")
			if code != 200 || !strings.Contains(body, "tokencache_") {
				t.Errorf("/metrics on %s: %d", m, code)
			}
			outs = append(outs, output{"metrics " + m + " " + format, body, false})
		}
		outs = append(outs, output{"serve logs " + format, serve.stop(w), false}, output{"proxy logs " + format, proxy.stop(w), false})
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("the proxy's socket outlived it: %v", err)
		}
		// Usage errors with the secrets configured.
		for _, args := range [][]string{
			{"serve", "--listen", "0.0.0.0:1"}, {"serve", "--listen-secret=" + e2eListenSecret},
			{"proxy", "--upstream", "https://x:" + e2eListenSecret + "@h"}, {"serve", "--socket-mode", e2eListenSecret},
		} {
			r := w.run(env, args...)
			if r.code != ExitUsage {
				t.Errorf("%v: exit %d, want 2", args[0], r.code)
			}
			outs = append(outs, output{args[0] + " usage error " + format, r.stderr + r.stdout, false})
		}
	}
	checkOutputs(t, &scan, tokens, 4, outs)
}
