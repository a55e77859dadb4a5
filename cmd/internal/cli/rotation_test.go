package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tokencache/tokencache/cmd/internal/localapi"
	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/securitytest"
	"github.com/tokencache/tokencache/internal/testutil"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// Distinctive secrets of the rotation tests, looked for in every output.
const (
	rotKey1    = "rot-KEY-one-4c8e2a6b1d3f5e7a"
	rotKey2    = "rot-KEY-two-9f1e3d5c7b2a4e6d"
	rotKey3    = "rot-KEY-three-0a2c4e6b8d1f3a5c"
	rotListen1 = "rot-LISTEN-one-5b7d9f1a3c5e"
	rotListen2 = "rot-LISTEN-two-2e4a6c8b0d1f"
)

// TestServeRotatesSecretsWithoutARestart runs serve in process with its
// API key and listen secret in files, and rotates both while it serves:
// after the rotation the fake issuer accepts only the new key, and the
// next issuer call (made at once, as the held token was minted under the
// previous key) uses it; the next request is checked against the new
// listen secret; an empty or unreadable key file keeps the key in use and
// logs one line naming the file; no output holds a secret.
func TestServeRotatesSecretsWithoutARestart(t *testing.T) {
	srv := redistest.Start(t)
	iss := issuertest.RunT(t, issuertest.WithAPIKey(rotKey1))
	dir := t.TempDir()
	keyFile, listenFile := filepath.Join(dir, "api-key"), filepath.Join(dir, "listen-secret")
	writeFileAtomic(t, keyFile, rotKey1+"\n")
	writeFileAtomic(t, listenFile, rotListen1)
	addr := freeAddr(t)
	env := map[string]string{EnvRedisURL: srv.URL(), EnvNamespace: "rotation", EnvIssuerURL: iss.URL(), EnvLogLevel: "debug"}
	reload := make(chan struct{})
	logs, stop := startInProcess(t, env, reload, "serve", "--listen", addr, "--api-key-file", keyFile, "--listen-secret-file", listenFile, "--reload-interval", "0")
	testutil.Eventually(t, "serve listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})

	var outs []output
	tokens := map[string]bool{}
	get := func(secret string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+localapi.TokenPath, nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		outs = append(outs, output{where: "GET /v1/token", text: string(b), tokensShown: true})
		var tr localapi.TokenResponse
		_ = json.Unmarshal(b, &tr)
		if tr.AccessToken != "" {
			tokens[tr.AccessToken] = true
		}
		return resp.StatusCode, tr.AccessToken
	}
	// refused counts the issuer's answers to a key it did not accept.
	refused := func() (n int) {
		for _, r := range iss.Requests() {
			if !r.KeyOK {
				n++
			}
		}
		return n
	}
	served := func(secret string, n int) string {
		t.Helper()
		var first string
		for i := range n {
			code, tok := get(secret)
			if code != http.StatusOK || (i > 0 && tok != first) {
				t.Fatalf("GET %d: status %d, token changed %v", i, code, tok != first)
			}
			if i == 0 {
				first = tok
			}
		}
		return first
	}
	signal := func() { t.Helper(); reload <- struct{}{} }

	old := served(rotListen1, 5)
	before := iss.Stats().TokenCalls

	// The rotation: the issuer takes the new key only, the file follows,
	// then SIGHUP.
	iss.SetAPIKey(rotKey2)
	writeFileAtomic(t, keyFile, rotKey2)
	signal()
	testutil.Eventually(t, "an issuer call with the new key", func() bool { return iss.Stats().TokenCalls > before })
	newTok := served(rotListen1, 5)
	after := iss.Stats().TokenCalls
	t.Logf("rotation: issuer calls %d before, %d after (1 with the new key); refused keys %d; 10 requests served, none failed", before, after, refused())
	if before != 1 || after != 2 || refused() != 0 {
		t.Errorf("issuer calls %d before and %d after the rotation, %d refused; want 1, 2, 0", before, after, refused())
	}
	if newTok == old || !iss.Valid(newTok) {
		t.Errorf("after the rotation: the token is the old one, or not valid at the issuer")
	}

	// The listen secret: the next request is checked against the new one.
	writeFileAtomic(t, listenFile, rotListen2)
	signal()
	testutil.Eventually(t, "the new listen secret accepted", func() bool { c, _ := get(rotListen2); return c == http.StatusOK })
	if code, _ := get(rotListen1); code != http.StatusUnauthorized {
		t.Errorf("the old listen secret after its rotation: status %d, want 401", code)
	}

	// A bad new key file keeps the key in use and says which file.
	for _, bad := range []struct {
		name, line string
		apply      func()
	}{
		{"empty", "the secret file is unusable", func() { writeFileAtomic(t, keyFile, "\n") }},
		{"unreadable", "cannot read the secret file", func() {
			// A directory in the file's place: "is a directory".
			if err := os.Remove(keyFile); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(keyFile, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		n := countLines(logs.String(), bad.line, "file="+keyFile)
		bad.apply()
		signal()
		testutil.Eventually(t, bad.name+": the line naming the file", func() bool {
			return countLines(logs.String(), bad.line, "file="+keyFile) == n+1
		})
		if served(rotListen2, 3) != newTok || iss.Stats().TokenCalls != after {
			t.Errorf("%s key file: the token or the issuer calls changed", bad.name)
		}
	}

	// A good file again is picked up.
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	iss.SetAPIKey(rotKey3)
	writeFileAtomic(t, keyFile, rotKey3)
	signal()
	testutil.Eventually(t, "an issuer call with the third key", func() bool { return iss.Stats().TokenCalls > after })
	if refused() != 0 {
		t.Errorf("%d issuer calls with a key it no longer accepted", refused())
	}
	served(rotListen2, 3)
	stop()

	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "secret file") || strings.Contains(l, "new credential") {
			t.Log(l)
		}
	}
	outs = append(outs, output{where: "serve's logs", text: logs.String()})
	var scan securitytest.Scanner
	for name, s := range map[string]string{"key 1": rotKey1, "key 2": rotKey2, "key 3": rotKey3, "listen secret 1": rotListen1, "listen secret 2": rotListen2} {
		scan.Add(t, name, s)
	}
	checkOutputs(t, &scan, tokens, 3, outs)
}

// startInProcess runs the command args in process with env, reload in
// place of SIGHUP, until stop (also called at cleanup); its output is in
// the buffer returned.
func startInProcess(t *testing.T, env map[string]string, reload chan struct{}, args ...string) (*testutil.Buffer, func()) {
	t.Helper()
	logs := &testutil.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, args, Env{Stdout: logs, Stderr: logs, Getenv: func(k string) string { return env[k] }, Reload: reload})
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v\n%s", args[0], err, logs.String())
			}
		})
	}
	t.Cleanup(stop)
	return logs, stop
}

// TestProxyPicksUpRotatedFilesOnAPoll runs proxy in process with the jwt
// provider, its API key, client secret and key ring in files, and no
// signal: a new key ring (a new active key) is used by the next write; an
// API key and client secret rotated in two files are used together once
// the files have settled, by one authenticate call that the issuer (which
// accepts only the new pair) answers; the proxy serves throughout.
func TestProxyPicksUpRotatedFilesOnAPoll(t *testing.T) {
	const (
		key1, secret1 = "jwt-KEY-one-7a9c1e3b5d", "jwt-SECRET-one-2b4d6f8a0c"
		key2, secret2 = "jwt-KEY-two-3c5e7a9b1d", "jwt-SECRET-two-8d0f2b4a6c"
	)
	srv := redistest.Start(t)
	iss := issuertest.RunT(t, issuertest.WithAPIKey(key1), issuertest.WithClientSecret(secret1))
	dir := t.TempDir()
	keyFile, secretFile, ringFile := filepath.Join(dir, "api-key"), filepath.Join(dir, "client-secret"), filepath.Join(dir, "keys")
	k1, k2 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)), base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32))
	writeFileAtomic(t, keyFile, key1)
	writeFileAtomic(t, secretFile, secret1)
	writeFileAtomic(t, ringFile, "k1:"+k1)
	sock := filepath.Join(dir, "proxy.sock")
	env := map[string]string{EnvRedisURL: srv.URL(), EnvNamespace: "rotation-jwt", EnvIssuerURL: iss.URL(), EnvProvider: "jwt"}
	files := []string{"--api-key-file", keyFile, "--client-secret-file", secretFile, "--encryption-keys-file", ringFile}
	logs, stop := startInProcess(t, env, make(chan struct{}),
		append([]string{"proxy", "--upstream", iss.URL(), "--listen", "unix:" + sock, "--reload-interval", "20ms"}, files...)...)
	client := unixClient(sock)
	get := func() int {
		t.Helper()
		resp, err := client.Get("http://proxy/api/ping")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	testutil.Eventually(t, "proxy listening", func() bool { _, err := os.Stat(sock); return err == nil })
	inspect := func() (keyID, fp string) {
		t.Helper()
		out, _, err := runArgs(t, env, append([]string{"inspect", "--json"}, files...)...)
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			KeyID       string `json:"key_id"`
			Fingerprint string `json:"fingerprint"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		return st.KeyID, st.Fingerprint
	}
	for range 3 {
		if code := get(); code != http.StatusOK {
			t.Fatalf("through the proxy: %d", code)
		}
	}
	if id, _ := inspect(); id != "k1" || iss.Stats().AuthenticateCalls != 1 {
		t.Fatalf("at start: key id %q, %d authenticate calls; want k1, 1", id, iss.Stats().AuthenticateCalls)
	}

	writeFileAtomic(t, ringFile, "k2:"+k2+",k1:"+k1)
	testutil.Eventually(t, "the new key ring read", func() bool { return countLines(logs.String(), "secret file re-read", "file="+ringFile) == 1 })

	iss.SetAPIKey(key2)
	iss.SetClientSecret(secret2)
	writeFileAtomic(t, keyFile, key2)
	writeFileAtomic(t, secretFile, secret2)
	testutil.Eventually(t, "an authenticate call with the new pair", func() bool { return iss.Stats().AuthenticateCalls >= 2 })
	testutil.Eventually(t, "the new token sealed under k2", func() bool { id, _ := inspect(); return id == "k2" })
	for range 3 {
		if code := get(); code != http.StatusOK {
			t.Errorf("through the proxy after the rotation: %d", code)
		}
	}
	id, fp := inspect()
	t.Logf("proxy, polling: authenticate calls 1 before, %d after; key id %s, credential %s", iss.Stats().AuthenticateCalls, id, fp)
	if iss.Stats().AuthenticateCalls != 2 || !strings.HasPrefix(fp, "hmac-sha256:k2:") {
		t.Errorf("authenticate calls %d, credential fingerprint %s; want 2 (none refused), keyed under k2", iss.Stats().AuthenticateCalls, fp)
	}
	stop()
	var scan securitytest.Scanner
	for name, s := range map[string]string{"key 1": key1, "key 2": key2, "secret 1": secret1, "secret 2": secret2, "ring key 1": k1, "ring key 2": k2} {
		scan.Add(t, name, s)
	}
	scan.Check(t, "proxy's logs", logs.String())
}

// TestServeRenewsItsTLSCertificateWithoutARestart: serve's own listener
// certificate, renewed in its files, is presented by the next connection;
// a key that does not match its certificate keeps the previous pair.
func TestServeRenewsItsTLSCertificateWithoutARestart(t *testing.T) {
	srv := redistest.Start(t)
	iss := issuertest.RunT(t)
	pki1, pki2 := redistest.GenerateTLS(t, t.TempDir()), redistest.GenerateTLS(t, t.TempDir())
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	dir := t.TempDir()
	certFile, keyFile, listenFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "listen")
	writeFileAtomic(t, certFile, read(pki1.CertFile))
	writeFileAtomic(t, keyFile, read(pki1.KeyFile))
	writeFileAtomic(t, listenFile, rotListen1)
	addr := freeAddr(t)
	env := map[string]string{EnvRedisURL: srv.URL(), EnvNamespace: "rotation-tls", EnvIssuerURL: iss.URL(), EnvBasiqAPIKey: iss.APIKey()}
	reload := make(chan struct{})
	logs, _ := startInProcess(t, env, reload, "serve", "--listen", addr, "--tls-cert-file", certFile, "--tls-key-file", keyFile,
		"--listen-secret-file", listenFile, "--reload-interval", "0")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(read(pki1.CAFile)))
	pool.AppendCertsFromPEM([]byte(read(pki2.CAFile)))
	// presented returns the certificate a new connection is shown.
	presented := func() []byte {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}}
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+localapi.TokenPath, nil)
		req.Header.Set("Authorization", "Bearer "+rotListen1)
		resp, err := client.Do(req)
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK || resp.TLS == nil {
			return nil
		}
		return resp.TLS.PeerCertificates[0].Raw
	}
	der := func(pemFile string) []byte {
		b, _ := pem.Decode([]byte(read(pemFile)))
		return b.Bytes
	}
	testutil.Eventually(t, "serve answering with the first certificate", func() bool { return bytes.Equal(presented(), der(pki1.CertFile)) })

	writeFileAtomic(t, keyFile, read(pki2.KeyFile)) // half renewed: the pair does not match
	reload <- struct{}{}
	testutil.Eventually(t, "the line naming the files", func() bool {
		return countLines(logs.String(), "the secret file is unusable", "file="+certFile+","+keyFile) == 1
	})
	if !bytes.Equal(presented(), der(pki1.CertFile)) {
		t.Error("a mismatched pair: the previous certificate is not served")
	}
	writeFileAtomic(t, certFile, read(pki2.CertFile))
	reload <- struct{}{}
	testutil.Eventually(t, "the renewed certificate presented", func() bool { return bytes.Equal(presented(), der(pki2.CertFile)) })
}

// TestDaemonRotatesOAuth2ClientCredentials runs the daemon in process with
// the oauth2 provider, its client id and secret in files: after both are
// rotated at the token endpoint (which then accepts only the new pair) and
// in the files, a SIGHUP makes the next token request use the new pair.
func TestDaemonRotatesOAuth2ClientCredentials(t *testing.T) {
	type pair struct{ id, secret string }
	var accepted atomic.Pointer[pair]
	accepted.Store(&pair{"client-one", "oauth2-SECRET-one-5d7f9a1b"})
	var ok, refused atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		id, secret, _ := r.BasicAuth()
		if p := accepted.Load(); id != p.id || secret != p.secret {
			refused.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"invalid_client"}`)
			return
		}
		n := ok.Add(1)
		_, _ = io.WriteString(w, `{"access_token":"oauth2-token-`+strconv.FormatInt(n, 10)+`","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(ts.Close)
	srv := redistest.Start(t)
	dir := t.TempDir()
	idFile, secretFile := filepath.Join(dir, "client-id"), filepath.Join(dir, "client-secret")
	writeFileAtomic(t, idFile, "client-one")
	writeFileAtomic(t, secretFile, "oauth2-SECRET-one-5d7f9a1b")
	addr := freeAddr(t)
	env := map[string]string{EnvRedisURL: srv.URL(), EnvNamespace: "rotation-oauth2", EnvProvider: "oauth2"}
	reload := make(chan struct{})
	logs, stop := startInProcess(t, env, reload, "daemon", "--listen", addr, "--interval", "100ms", "--token-url", ts.URL,
		"--client-id-file", idFile, "--client-secret-file", secretFile, "--reload-interval", "0")
	ready := func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	testutil.Eventually(t, "/readyz 200", ready)
	before := ok.Load()

	accepted.Store(&pair{"client-two", "oauth2-SECRET-two-8e0a2c4d"})
	writeFileAtomic(t, idFile, "client-two")
	writeFileAtomic(t, secretFile, "oauth2-SECRET-two-8e0a2c4d")
	reload <- struct{}{}
	testutil.Eventually(t, "a token request with the new pair", func() bool { return ok.Load() > before })
	if !ready() {
		t.Error("/readyz is not 200 after the rotation")
	}
	stop()
	t.Logf("daemon, oauth2: token requests %d before, %d after; refused %d", before, ok.Load(), refused.Load())
	if before != 1 || ok.Load() != 2 || refused.Load() != 0 {
		t.Errorf("token requests %d before and %d after, %d refused; want 1, 2, 0", before, ok.Load(), refused.Load())
	}
	var scan securitytest.Scanner
	scan.Add(t, "secret one", "oauth2-SECRET-one-5d7f9a1b")
	scan.Add(t, "secret two", "oauth2-SECRET-two-8e0a2c4d")
	scan.Check(t, "the daemon's logs", logs.String())
}
