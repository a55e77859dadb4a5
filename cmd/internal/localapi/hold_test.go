package localapi

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/testutil"
)

// The tests in this file are clients that try to hold serve's or proxy's
// connections and memory (issue 22, item 3).

// rawConn dials the server and returns the connection with a reader of
// its answers. The connection has a generous deadline: a test that fails
// fails by it, instead of hanging.
func rawConn(t *testing.T, s *server) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, bufio.NewReader(c)
}

// closedByServer reports whether the server closed c: the next read ends
// with EOF (not with the test's deadline).
func closedByServer(br *bufio.Reader) bool {
	_, err := br.ReadByte()
	return err == io.EOF
}

func TestConnectionIsClosedAfterA401(t *testing.T) {
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	s := serve(t, ListenConfig{}, func(*Metrics) http.Handler { return ok }, GuardConfig{})
	c, br := rawConn(t, s)
	if _, err := io.WriteString(c, "GET "+TokenPath+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-secret-0123456789\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401", resp.StatusCode)
	}
	if !closedByServer(br) {
		t.Error("the connection is still open after the 401")
	}
}

func TestIdleConnectionIsClosed(t *testing.T) {
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ok, 100*time.Millisecond)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	if srv.IdleTimeout <= 0 || NewServer(ok, 0).IdleTimeout != DefaultIdleTimeout {
		t.Fatalf("IdleTimeout %v, default %v", srv.IdleTimeout, NewServer(ok, 0).IdleTimeout)
	}
	c, br := rawConn(t, &server{base: "http://" + ln.Addr().String()})
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%v %v", resp, err)
	}
	resp.Body.Close()
	if !closedByServer(br) {
		t.Error("the idle connection is still open")
	}
}

// A body that stops coming is answered 408, on both endpoints, and never
// reaches the upstream.
func TestTricklingBodyIs408(t *testing.T) {
	f := newFleet(t)
	up := newUpstream(t, f, nil)
	g := GuardConfig{BodyTimeout: 200 * time.Millisecond}
	tok := serve(t, ListenConfig{}, func(m *Metrics) http.Handler { return NewTokenHandler(f.source(), m, nil) }, g)
	prx := serve(t, ListenConfig{}, func(m *Metrics) http.Handler {
		p, err := NewProxy(f.source(), ProxyConfig{Upstream: up.url, Metrics: m})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}, g)
	for _, c := range []struct {
		name, path string
		s          *server
		length     int
	}{
		{"invalidate", InvalidatePath, tok, 100},
		{"proxy, a body kept for a retry", "/api/x", prx, 100},
		{"proxy, a body streamed", "/api/x", prx, 2 << 20},
	} {
		conn, br := rawConn(t, c.s)
		head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n{\"fing", c.path, testSecret, c.length)
		if _, err := io.WriteString(conn, head); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if c.length <= DefaultMaxRetryBody && resp.StatusCode != http.StatusRequestTimeout {
			t.Errorf("%s: status %d, want 408", c.name, resp.StatusCode)
		}
		if !closedByServer(br) {
			t.Errorf("%s: the connection is still open", c.name)
		}
	}
	if n := len(up.seen()); n > 1 {
		t.Errorf("the upstream saw %d requests, want at most the streamed one", n)
	}
}

// slowBodies sends n request bodies of Content-Length 1 MiB through the
// proxy, each stopping short of its end, and returns the heap in use once
// the proxy has read all that was sent, less the heap before.
func slowBodies(t *testing.T, n int) (grown uint64, p *server) {
	f := newFleet(t)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(api.Close)
	upURL, _ := url.Parse(api.URL)
	var read atomic.Int64
	p = serve(t, ListenConfig{}, func(m *Metrics) http.Handler {
		h, err := NewProxy(f.source(), ProxyConfig{Upstream: upURL, Metrics: m})
		if err != nil {
			t.Fatal(err)
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = countingBody{r.Body, &read}
			h.ServeHTTP(w, r)
		})
	}, GuardConfig{})
	if code, body := p.do(t, http.MethodGet, "/warm", ""); code != http.StatusOK { // the proxy has its token
		t.Fatalf("warm-up: %d %s", code, body)
	}
	const sent = 1000 * 1000
	chunk := make([]byte, sent)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		c, _ := rawConn(t, p)
		head := fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", testSecret, DefaultMaxRetryBody)
		go func() {
			_, _ = io.WriteString(c, head)
			_, _ = c.Write(chunk) // and the rest never comes
		}()
	}
	testutil.Eventually(t, "the proxy to read what was sent", func() bool { return read.Load() >= int64(n*sent) })
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if after.HeapInuse < before.HeapInuse {
		return 0, p
	}
	return after.HeapInuse - before.HeapInuse, p
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func TestSixtySlowBodiesHoldAtMostTheBufferCap(t *testing.T) {
	const bodies = 60
	grown, _ := slowBodies(t, bodies)
	t.Logf("%d slow bodies of 1 MiB through the proxy: heap in use grew by %.1f MiB", bodies, float64(grown)/(1<<20))
	if limit := uint64(DefaultMaxBuffered + 16<<20); grown > limit {
		t.Errorf("heap grew by %d MiB, want at most the %d MiB cap and some", grown>>20, DefaultMaxBuffered>>20)
	}
}
