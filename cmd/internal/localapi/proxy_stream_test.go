package localapi

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

// TestProxyStreamsABodyOfUnknownLength: the upstream writes and flushes a
// first line, then waits for the client to have it before writing the
// rest. The proxy must pass the first line on at once (it does not buffer
// a body of unknown length), or the two would wait for each other.
func TestProxyStreamsABodyOfUnknownLength(t *testing.T) {
	f := newFleet(t)
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "second\n")
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	p := proxyServer(t, f.source(), u, ListenConfig{})

	req, _ := http.NewRequest(http.MethodGet, p.base+"/stream", nil)
	req.Header.Set("Authorization", "Bearer "+p.secret)
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ContentLength != -1 {
		t.Fatalf("ContentLength %d, want -1 (a stream)", resp.ContentLength)
	}
	br := bufio.NewReader(resp.Body)
	first := make(chan string, 1)
	go func() {
		line, _ := br.ReadString('\n')
		first <- line
	}()
	select {
	case line := <-first:
		if line != "first\n" {
			t.Fatalf("first line %q", line)
		}
	case <-time.After(30 * time.Second): // a hang bound, not a timing assertion
		close(release)
		t.Fatal("the first line never came through while the upstream waited: the proxy buffers streams")
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "second\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
}
