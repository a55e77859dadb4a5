package localapi

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"testing"
)

// BenchmarkProxyOverhead measures what the proxy adds to an API call: the
// same GET of the fake's protected resource sent directly with the token
// (the application holds it), through a bare ReverseProxy adding a fixed
// header, and through the proxy, on loopback TCP and
// on a Unix socket. Run once:
//
//	go test ./internal/localapi -run '^$' -bench ProxyOverhead -benchtime 3000x
func BenchmarkProxyOverhead(b *testing.B) {
	f := newFleet(b)
	src := f.source()
	tok, _, err := src.Token(b.Context(), "")
	if err != nil {
		b.Fatal(err)
	}
	up := newUpstream(b, f, nil)
	direct := &http.Client{Transport: &http.Transport{}}
	// The reference: a bare ReverseProxy adding a fixed header, on its
	// own loopback listener.
	bare := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(up.url)
		pr.Out.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	}})
	b.Cleanup(bare.Close)
	bareClient := &http.Client{Transport: &http.Transport{}}
	tcp := proxyServer(b, src, up.url, ListenConfig{})
	sock := proxyServer(b, src, up.url, ListenConfig{Addr: "unix:" + shortDir(b) + "/b.sock"})
	get := func(b *testing.B, c *http.Client, url, auth string) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", auth)
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			get(b, direct, up.srv.URL+"/api/bench", "Bearer "+tok.AccessToken)
		}
	})
	b.Run("bare-tcp", func(b *testing.B) {
		for b.Loop() {
			get(b, bareClient, bare.URL+"/api/bench", "")
		}
	})
	b.Run("proxy-tcp", func(b *testing.B) {
		for b.Loop() {
			get(b, tcp.client, tcp.base+"/api/bench", "Bearer "+testSecret)
		}
	})
	b.Run("proxy-unix", func(b *testing.B) {
		for b.Loop() {
			get(b, sock.client, sock.base+"/api/bench", "")
		}
	})
	b.Logf("issuer calls: %d", f.issuer.Stats().TokenCalls)
}

// BenchmarkTokenEndpoint measures GET /v1/token on a Unix socket (the
// guard's rate limit on, far above this client's rate) beside a bare
// handler on a Unix socket that answers the same bytes as a constant:
//
//	go test ./internal/localapi -run '^$' -bench TokenEndpoint -benchmem
func BenchmarkTokenEndpoint(b *testing.B) {
	f := newFleet(b)
	src := f.source()
	tok := serve(b, ListenConfig{Addr: "unix:" + shortDir(b) + "/t.sock"}, func(m *Metrics) http.Handler {
		return NewTokenHandler(src, m, nil)
	}, GuardConfig{Rate: 1e9, Burst: 1e9})
	status, body := tok.do(b, http.MethodGet, TokenPath, "")
	if status != http.StatusOK {
		b.Fatalf("status %d", status)
	}
	bare := serve(b, ListenConfig{Addr: "unix:" + shortDir(b) + "/c.sock"}, func(*Metrics) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, body)
		})
	}, GuardConfig{})
	for _, s := range []struct {
		name string
		srv  *server
	}{{"bare-handler", bare}, {"serve", tok}} {
		b.Run(s.name, func(b *testing.B) {
			for b.Loop() {
				resp, err := s.srv.client.Get(s.srv.base + TokenPath)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}
