package localapi

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/tokencache/tokencache/internal/securitytest"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// upstream is the fake issuer's API behind a recorder of the headers of
// every API request (not the token requests, which go to the issuer
// directly).
type upstream struct {
	srv *httptest.Server
	url *url.URL

	mu      sync.Mutex // guards headers
	headers []http.Header
}

func newUpstream(t testing.TB, f *fleet, extra http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.headers = append(u.headers, r.Header.Clone())
		u.mu.Unlock()
		if extra != nil {
			extra(w, r)
		}
		f.issuer.ServeHTTP(w, r)
	}))
	t.Cleanup(u.srv.Close)
	u.url, _ = url.Parse(u.srv.URL)
	return u
}

func (u *upstream) seen() []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.headers...)
}

func proxyServer(t testing.TB, src Source, up *url.URL, lc ListenConfig) *server {
	t.Helper()
	return serve(t, lc, func(m *Metrics) http.Handler {
		p, err := NewProxy(src, ProxyConfig{Upstream: up, Metrics: m})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}, GuardConfig{})
}

func TestHundredRequestsThroughTwoProxiesSurviveARevocation(t *testing.T) {
	hundredRequestsThroughTwoProxies(t, 50)
}

// A second revocation soon after the first (the new token revoked while
// the first one's 401s are still fresh) is the token's fault, not the
// API's: every request is retried with a token the API accepts, none is
// answered with the upstream's 401.
func TestHundredRequestsThroughTwoProxiesSurviveRevocationsInQuickSuccession(t *testing.T) {
	hundredRequestsThroughTwoProxies(t, 33, 66)
}

// hundredRequestsThroughTwoProxies sends 100 requests through two proxies
// of one fleet, the API revoking every token after each count of requests
// in revokeAt, and checks every request is answered 200 with one issuer
// call per revocation.
func hundredRequestsThroughTwoProxies(t *testing.T, revokeAt ...int32) {
	f := newFleet(t)
	up := newUpstream(t, f, nil)
	proxies := []*server{proxyServer(t, f.source(), up.url, ListenConfig{}), proxyServer(t, f.source(), up.url, ListenConfig{})}
	const workers, each = 10, 10
	var (
		done   atomic.Int32
		failed atomic.Int32
		wg     sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				p := proxies[(w+i)%2]
				method, body := http.MethodGet, ""
				if i%3 == 0 {
					method, body = http.MethodPost, fmt.Sprintf(`{"worker":%d,"n":%d}`, w, i)
				}
				code, resp := p.do(t, method, fmt.Sprintf("/api/items/%d-%d", w, i), body)
				if code != http.StatusOK {
					failed.Add(1)
					t.Errorf("worker %d request %d: %d %s", w, i, code, resp)
				}
				if slices.Contains(revokeAt, done.Add(1)) {
					f.issuer.RevokeAll()
				}
			}
		}()
	}
	wg.Wait()
	st := f.issuer.Stats()
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed", failed.Load(), workers*each)
	}
	if want := int64(1 + len(revokeAt)); int64(st.TokenCalls) > want {
		t.Errorf("issuer calls: %d, want at most %d", st.TokenCalls, want)
	}
	if st.Unauthorized == 0 {
		t.Error("no request met the revocation: the test proves nothing")
	}
	var ok200, retried float64
	for _, p := range proxies {
		ok200 += counter(t, p.reg, "tokencache_proxy_requests_total", "status", "200")
		retried += counter(t, p.reg, "tokencache_local_invalidations_total", "origin", "proxy", "result", "retried")
		lint(t, p.reg)
	}
	if ok200 != workers*each || retried < 1 {
		t.Errorf("metrics: %v answers 200 (want %d), %v retried after a 401 (want at least 1)", ok200, workers*each, retried)
	}
	// Neither the metrics nor anything else here carries a token.
	var scan securitytest.Scanner
	seenTok := map[string]bool{}
	for _, h := range up.seen() {
		if tok := strings.TrimPrefix(h.Get("Authorization"), "Bearer "); !seenTok[tok] {
			seenTok[tok] = true
			scan.Add(t, "token", tok)
		}
	}
	if len(seenTok) != 1+len(revokeAt) {
		t.Errorf("upstream saw %d tokens, want %d", len(seenTok), 1+len(revokeAt))
	}
	for i, p := range proxies {
		mfs, _ := p.reg.Gather()
		for _, mf := range mfs {
			scan.Check(t, fmt.Sprintf("proxy %d metric %s", i, mf.GetName()), mf.String())
		}
	}
	t.Logf("requests %d, issuer calls %d, upstream 401s %d, retried %v", workers*each, st.TokenCalls, st.Unauthorized, retried)
}

// counter sums the counters of family name whose labels include the
// given name, value pairs.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// lint checks a registry with promlint.
func lint(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestClientAuthorizationNeverReachesUpstream(t *testing.T) {
	f := newFleet(t)
	up := newUpstream(t, f, func(w http.ResponseWriter, _ *http.Request) {
		// A rotating API sends tokens back in this header: the client
		// must not get them either.
		w.Header().Set("Authorization", "Bearer upstream-token-in-response")
	})
	src := f.source()
	tcp := proxyServer(t, src, up.url, ListenConfig{})
	sock := proxyServer(t, src, up.url, ListenConfig{Addr: "unix:" + shortDir(t) + "/p.sock"})
	const clientAuth = "Bearer client-supplied-SECRET-77aa"
	for _, p := range []*server{tcp, sock} {
		req, _ := http.NewRequest(http.MethodGet, p.base+"/api/whoami", nil)
		if p.secret != "" {
			req.Header.Set("Authorization", "Bearer "+p.secret)
		} else {
			req.Header.Set("Authorization", clientAuth)
		}
		req.Header.Set("Proxy-Authorization", clientAuth)
		resp, err := p.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d", p.base, resp.StatusCode)
		}
		if v := resp.Header.Values("Authorization"); len(v) != 0 {
			t.Errorf("%s: the upstream's Authorization response header reached the client", p.base)
		}
	}
	seen := up.seen()
	if len(seen) != 2 {
		t.Fatalf("upstream saw %d requests, want 2", len(seen))
	}
	for i, h := range seen {
		auth := h.Values("Authorization")
		if len(auth) != 1 || !strings.HasPrefix(auth[0], "Bearer ") || !f.issuer.Valid(strings.TrimPrefix(auth[0], "Bearer ")) {
			t.Errorf("request %d: upstream got %d Authorization values, want one with a token it issued", i, len(auth))
		}
		for name, vs := range h {
			for _, v := range vs {
				if strings.Contains(v, "client-supplied") || strings.Contains(v, testSecret) {
					t.Errorf("request %d: header %s carries what the client sent", i, name)
				}
			}
		}
	}
}

func TestRequestForAnotherHostIsRefused(t *testing.T) {
	f := newFleet(t)
	up := newUpstream(t, f, nil)
	p := proxyServer(t, f.source(), up.url, ListenConfig{})
	pu, _ := url.Parse(p.base)
	auth := http.Header{"Authorization": {"Bearer " + testSecret}}
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), ProxyConnectHeader: auth}}
	defer c.CloseIdleConnections()
	get := func(target string) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, target, nil)
		req.Header = auth.Clone()
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// Absolute-form requests, as an HTTP client configured with the proxy sends them.
	if code, err := get("http://evil.example/api/x"); err != nil || code != http.StatusForbidden {
		t.Errorf("another host: %d %v, want 403", code, err)
	}
	if code, err := get("http://" + up.url.Hostname() + ":1/api/x"); err != nil || code != http.StatusForbidden {
		t.Errorf("the upstream's host on another port: %d %v, want 403", code, err)
	}
	if _, err := get("https://evil.example/api/x"); err == nil {
		t.Error("CONNECT to another host succeeded")
	}
	if n := len(up.seen()); n != 0 {
		t.Fatalf("upstream saw %d requests, want 0", n)
	}
	if code, err := get(up.srv.URL + "/api/x"); err != nil || code != http.StatusOK {
		t.Errorf("the upstream itself in absolute form: %d %v, want 200", code, err)
	}
	if refused := counter(t, p.reg, "tokencache_proxy_requests_total", "status", "refused"); refused != 3 {
		t.Errorf("refused requests counted: %v, want 3", refused)
	}
}

func TestProxyStreamsResponses(t *testing.T) {
	f := newFleet(t)
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "second\n")
	}))
	t.Cleanup(slow.Close)
	defer close(release)
	su, _ := url.Parse(slow.URL)
	p := proxyServer(t, f.source(), su, ListenConfig{})
	req, _ := http.NewRequest(http.MethodGet, p.base+"/stream", nil)
	req.Header.Set("Authorization", "Bearer "+testSecret)
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(resp.Body).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if s != "first\n" {
			t.Errorf("first line %q", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the first part never came through: the proxy holds the response")
	}
}

func TestProxyWithoutTokenIs503WithTheReason(t *testing.T) {
	f := newFleet(t)
	f.issuer.FailAlways(issuertest.Fail(http.StatusForbidden, "access-denied"))
	up := newUpstream(t, f, nil)
	p := proxyServer(t, f.source(), up.url, ListenConfig{})
	code, body := p.do(t, http.MethodGet, "/api/x", "")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "access-denied") {
		t.Errorf("%d %s, want 503 naming access-denied", code, body)
	}
	if n := len(up.seen()); n != 0 {
		t.Errorf("upstream saw %d requests without a token, want 0", n)
	}
}

func TestNewProxyRefusesABadUpstream(t *testing.T) {
	f := newFleet(t)
	for _, raw := range []string{"ftp://h", "https://", "https://u:p@h", "https://h/?q=1", "/relative"} {
		u, _ := url.Parse(raw)
		if _, err := NewProxy(f.source(), ProxyConfig{Upstream: u}); err == nil {
			t.Errorf("upstream %q accepted", raw)
		}
	}
}

func TestProxyForAUserUsesItsClientToken(t *testing.T) {
	f := newFleet(t)
	up := newUpstream(t, f, nil)
	p := serve(t, ListenConfig{}, func(m *Metrics) http.Handler {
		h, err := NewProxy(f.source(), ProxyConfig{Upstream: up.url, UserID: "u-7", Metrics: m})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}, GuardConfig{})
	if code, body := p.do(t, http.MethodGet, "/users/u-7/things", ""); code != http.StatusOK {
		t.Errorf("the user's own resource: %d %s", code, body)
	}
	if code, _ := p.do(t, http.MethodGet, "/users/u-8/things", ""); code != http.StatusForbidden {
		t.Errorf("another user's resource: %d, want 403 (a client token opens its own user only)", code)
	}
	if st := f.issuer.Stats(); st.ClientTokenCalls != 1 || st.ServerTokenCalls != 0 {
		t.Errorf("issuer: %d client and %d server token calls, want 1 and 0", st.ClientTokenCalls, st.ServerTokenCalls)
	}
	if _, err := NewProxy(f.source(), ProxyConfig{Upstream: up.url, UserID: "bad{id"}); err == nil {
		t.Error("a proxy for an invalid user id was built")
	}
}
