package localapi

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

const (
	testAPIKey = "sk-localapi-SECRET-8c1d4e7f2a"
	testSecret = "bearer-localapi-SECRET-5e9b0c3d"
)

// fleet is one Redis, one fake issuer and the caches of several replicas.
type fleet struct {
	t      testing.TB
	redis  *redistest.Server
	issuer *issuertest.Server
	ns     string
}

func newFleet(t testing.TB, opts ...issuertest.Option) *fleet {
	t.Helper()
	srv := redistest.Start(t)
	iss := issuertest.RunT(t, append([]issuertest.Option{issuertest.WithAPIKey(testAPIKey)}, opts...)...)
	return &fleet{t: t, redis: srv, issuer: iss, ns: "localapi"}
}

// source returns a new replica's Source: its own Redis client and cache,
// client tokens enabled, closed when the test ends.
func (f *fleet) source() Source {
	f.t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: f.redis.Addr})
	bf := basiq.New(testAPIKey, basiq.WithBaseURL(f.issuer.URL()))
	c, err := tokencache.New(rdb, bf, tokencache.WithNamespace(f.ns),
		UserTokens(func(id string) (Fetcher, error) { return bf.ForUser(id) }))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = c.Close(); _ = rdb.Close() })
	return NewSource(c, true, nil)
}

// server is one replica's local API, listening.
type server struct {
	base   string       // http://host:port, or http://unix for a socket
	client *http.Client // dials the listener
	secret string
	m      *Metrics
	reg    *prometheus.Registry
}

// serve starts h behind Guard on lc (its Addr defaulting to loopback TCP
// with testSecret) and returns how to reach it.
func serve(t testing.TB, lc ListenConfig, h func(m *Metrics) http.Handler, g GuardConfig) *server {
	t.Helper()
	if lc.Addr == "" {
		lc.Addr, lc.Secret = "127.0.0.1:0", testSecret
	}
	g.Secret = lc.Secret
	ln, err := lc.Listen()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s := &server{secret: lc.Secret, m: NewMetrics(reg, "test"), reg: reg}
	srv := &http.Server{Handler: Guard(h(s.m), g)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	if path, ok := SocketPath(lc.Addr); ok {
		s.base = "http://unix"
		s.client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}}
	} else {
		s.base = "http://" + ln.Addr().String()
		s.client = &http.Client{Transport: &http.Transport{}}
	}
	t.Cleanup(s.client.CloseIdleConnections)
	return s
}

func tokenServer(t testing.TB, src Source) *server {
	t.Helper()
	return serve(t, ListenConfig{}, func(m *Metrics) http.Handler { return NewTokenHandler(src, m, nil) }, GuardConfig{})
}

// do sends a request with the server's secret and returns the status and body.
func (s *server) do(t testing.TB, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if s.secret != "" {
		req.Header.Set("Authorization", "Bearer "+s.secret)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// token gets a token from GET /v1/token (user "" for the server token).
func (s *server) token(t testing.TB, user string) TokenResponse {
	t.Helper()
	path := TokenPath
	if user != "" {
		path += "?user_id=" + url.QueryEscape(user)
	}
	code, body := s.do(t, http.MethodGet, path, "")
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	var tr TokenResponse
	if err := json.Unmarshal([]byte(body), &tr); err != nil {
		t.Fatalf("GET %s: %v in %q", path, err, body)
	}
	return tr
}

// shortDir returns a directory with a short path (a socket path is
// limited to about 100 bytes), removed at cleanup.
func shortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Clean(dir)
}
