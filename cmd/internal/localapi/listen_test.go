package localapi

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tokencache/tokencache/internal/redistest"
)

func TestListenRules(t *testing.T) {
	for _, c := range []struct {
		name string
		lc   ListenConfig
		want string // "" accepted, else a part of the one-line reason
	}{
		{"unix without secret", ListenConfig{Addr: "unix:/tmp/x.sock"}, ""},
		{"unix with secret", ListenConfig{Addr: "unix:/tmp/x.sock", Secret: testSecret}, ""},
		{"loopback with secret", ListenConfig{Addr: "127.0.0.1:8200", Secret: testSecret}, ""},
		{"localhost with secret", ListenConfig{Addr: "localhost:8200", Secret: testSecret}, ""},
		{"ipv6 loopback with secret", ListenConfig{Addr: "[::1]:8200", Secret: testSecret}, ""},
		{"loopback without secret", ListenConfig{Addr: "127.0.0.1:8200"}, "needs a bearer secret"},
		{"short secret", ListenConfig{Addr: "127.0.0.1:8200", Secret: "short"}, "at least 16"},
		{"every interface with secret, no TLS", ListenConfig{Addr: ":8200", Secret: testSecret}, "needs both TLS and a bearer secret"},
		{"public with TLS, no secret", ListenConfig{Addr: "10.0.0.1:8200", CertFile: "c", KeyFile: "k"}, "needs both TLS and a bearer secret"},
		{"public with TLS and secret", ListenConfig{Addr: "0.0.0.0:8200", Secret: testSecret, CertFile: "c", KeyFile: "k"}, ""},
		{"a host name is not loopback", ListenConfig{Addr: "example.com:8200", Secret: testSecret}, "non-loopback"},
		{"cert without key", ListenConfig{Addr: "127.0.0.1:8200", Secret: testSecret, CertFile: "c"}, "both a certificate and a key"},
		{"no port", ListenConfig{Addr: "127.0.0.1", Secret: testSecret}, "want unix:PATH or HOST:PORT"},
		{"empty socket path", ListenConfig{Addr: "unix:"}, "empty socket path"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.lc.Check()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && err == nil:
				t.Fatalf("accepted, want refused with %q", c.want)
			case err != nil:
				var ce *ConfigError
				if !errors.As(err, &ce) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
					t.Errorf("error %q: want a one-line *ConfigError naming %q", err, c.want)
				}
				if strings.Contains(err.Error(), testSecret) {
					t.Error("the error holds the secret")
				}
			}
		})
	}
}

func TestSocketIsCreatedWithItsMode(t *testing.T) {
	dir := shortDir(t)
	for _, c := range []struct {
		mode, want os.FileMode
	}{{0, 0o600}, {0o660, 0o660}} {
		path := filepath.Join(dir, "t.sock")
		ln, err := ListenConfig{Addr: "unix:" + path, Mode: c.mode}.Listen()
		if err != nil {
			t.Fatal(err)
		}
		if got := ln.Addr().String(); got != path {
			t.Errorf("Addr() = %q, want %q", got, path)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != c.want {
			t.Errorf("mode %#o: socket has %v, want %#o", c.mode, fi.Mode(), c.want)
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 1 {
			t.Errorf("the directory holds %d entries, want the socket only", len(ents))
		}
		if err := ln.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the socket is still there after Close: %v", err)
		}
	}
}

func TestSocketReplacesAStaleOneButNoOtherFile(t *testing.T) {
	dir := shortDir(t)
	stale := filepath.Join(dir, "s.sock")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	_ = ul.Close() // the file stays, nobody listens: stale

	ln, err := ListenConfig{Addr: "unix:" + stale}.Listen()
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	if _, err := (ListenConfig{Addr: "unix:" + stale}).Listen(); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Errorf("over a live socket: %v, want refused", err)
	}
	_ = ln.Close()

	file := filepath.Join(dir, "f.sock")
	if err := os.WriteFile(file, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (ListenConfig{Addr: "unix:" + file}).Listen(); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a regular file: %v, want refused", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Error("the regular file was changed")
	}
}

func TestWrongOrMissingSecretIs401WithNoDetail(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "in") })
	s := serve(t, ListenConfig{}, func(*Metrics) http.Handler { return ok }, GuardConfig{})
	var bodies []string
	for _, auth := range []string{"", "Bearer", "Bearer wrong-secret-0123456789", "Basic " + testSecret, "Bearer " + testSecret + "x", "Bearer " + testSecret[:len(testSecret)-1]} {
		req, _ := http.NewRequest(http.MethodGet, s.base+TokenPath, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := s.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d, want 401", auth, resp.StatusCode)
		}
		bodies = append(bodies, string(b))
	}
	for i, b := range bodies {
		if b != "unauthorized\n" {
			t.Errorf("401 body %d is %q, want the same bare %q for every failure", i, b, "unauthorized\n")
		}
	}
	if code, body := s.do(t, http.MethodGet, TokenPath, ""); code != http.StatusOK || body != "in" {
		t.Errorf("with the secret: %d %q", code, body)
	}
}

func TestRateLimitPerClient(t *testing.T) {
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	var (
		mu       sync.Mutex // guards rejected
		rejected []string
	)
	// A rate so low that no token comes back during the test: the burst
	// is all a client gets.
	s := serve(t, ListenConfig{}, func(*Metrics) http.Handler { return ok },
		GuardConfig{Rate: 1e-6, Burst: 3, Rejected: func(_ *http.Request, r string) { mu.Lock(); rejected = append(rejected, r); mu.Unlock() }})
	var codes []int
	for range 5 {
		code, _ := s.do(t, http.MethodGet, TokenPath, "")
		codes = append(codes, code)
	}
	want := []int{200, 200, 200, 429, 429}
	for i := range want {
		if codes[i] != want[i] {
			t.Fatalf("statuses %v, want %v", codes, want)
		}
	}
	mu.Lock()
	if len(rejected) != 2 || rejected[0] != ResultRateLimited {
		t.Errorf("rejections reported: %v", rejected)
	}
	mu.Unlock()
	// Another client (another IP) has its own bucket.
	g := Guard(ok, GuardConfig{Rate: 1e-6, Burst: 1})
	for _, c := range []struct {
		remote string
		want   int
	}{{"10.0.0.1:5000", 200}, {"10.0.0.1:5001", 429}, {"10.0.0.2:5000", 200}, {"@", 200}, {"", 429}} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, TokenPath, nil)
		req.RemoteAddr = c.remote
		g.ServeHTTP(rec, req)
		if rec.Code != c.want {
			t.Errorf("client %q: %d, want %d", c.remote, rec.Code, c.want)
		}
	}
}

func TestTLSListenerServesTheGuardedAPI(t *testing.T) {
	files := redistest.GenerateTLS(t, t.TempDir())
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "in") })
	lc := ListenConfig{Addr: "127.0.0.1:0", Secret: testSecret, CertFile: files.CertFile, KeyFile: files.KeyFile}
	s := serve(t, lc, func(*Metrics) http.Handler { return ok }, GuardConfig{})
	s.base = strings.Replace(s.base, "http://", "https://", 1)
	s.client = &http.Client{Transport: &http.Transport{TLSClientConfig: files.ClientConfig()}}
	if code, body := s.do(t, http.MethodGet, TokenPath, ""); code != http.StatusOK || body != "in" {
		t.Errorf("over TLS with the secret: %d %q", code, body)
	}
	if _, err := (ListenConfig{Addr: "127.0.0.1:0", Secret: testSecret, CertFile: files.CertFile, KeyFile: files.CAFile}).Listen(); err == nil {
		t.Error("a key file that is no key was accepted")
	} else if ce := (*ConfigError)(nil); !errors.As(err, &ce) {
		t.Errorf("a bad key file: %v, want a *ConfigError", err)
	}
}

// Under its temporary name, before it has its mode, the socket can be
// reached by its owner only, whatever the umask gave it.
func TestSocketIsNeverReachableByOthersBeforeItHasItsMode(t *testing.T) {
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	checked := false
	socketCreated = func(tmp string) {
		checked = true
		fi, err := os.Stat(filepath.Dir(tmp))
		if err != nil {
			t.Fatal(err)
		}
		sfi, err := os.Stat(tmp)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 && sfi.Mode().Perm()&0o077 != 0 {
			t.Errorf("the socket %v under its temporary name is in a directory of mode %v", sfi.Mode(), fi.Mode())
		}
	}
	t.Cleanup(func() { socketCreated = nil })
	path := filepath.Join(dir, "p.sock")
	ln, err := ListenConfig{Addr: "unix:" + path, Mode: 0o660}.Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if !checked {
		t.Fatal("the hook was not called")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("the directory holds %d entries, want the socket only", len(ents))
	}
	if _, err := (ListenConfig{Addr: "unix:" + filepath.Join(dir, "o.sock"), Mode: 0o666}).Listen(); err == nil {
		t.Error("mode 0666 without a secret: listening, want refused")
	}
	if ln, err := (ListenConfig{Addr: "unix:" + filepath.Join(dir, "o.sock"), Mode: 0o666, Secret: testSecret}).Listen(); err != nil {
		t.Errorf("mode 0666 with a secret: %v", err)
	} else {
		_ = ln.Close()
	}
}
