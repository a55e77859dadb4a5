package tokencache

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testutil"
)

// gatedAPI is api with a gate: while armed, the next request of replica
// "A" is held (after it arrived) until released, and judged by the API only
// then.
type gatedAPI struct {
	*revokingAPI
	armed   atomic.Bool
	arrived chan struct{}
	release chan struct{}
}

func (g *gatedAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Replica") == "A" && g.armed.CompareAndSwap(true, false) {
		close(g.arrived)
		<-g.release
	}
	g.revokingAPI.ServeHTTP(w, r)
}

// A token that the API accepted from another replica is, for every
// replica, a token "accepted by the API before": its 401 is a revocation,
// not evidence that the API rejects fresh tokens. Replica A sends T1; while
// its request is on the wire, T1 is revoked, replica B replaces it with T2
// and the API accepts T2 from B, then T2 is revoked too. A's 401 for T1 is
// retried with T2, which A has never seen accepted. The retry's 401 is
// returned (a request is retried once), but it must not be taken as a
// fresh token rejected, which would hold every replica's 401s for a
// window: the next request on any replica invalidates T2 and succeeds
// with T3. One issuer call for T3, and no replica holds a 401.
func TestATokenAcceptedOnAnotherReplicaIsRetriedAfterItsRevocation(t *testing.T) {
	srv := redistest.Start(t)
	ctx := ctxT(t)
	a := &gatedAPI{
		revokingAPI: &revokingAPI{api: newAPI(), accepted: map[string]map[string]int{}},
		arrived:     make(chan struct{}),
		release:     make(chan struct{}),
	}
	hs := httptest.NewServer(a)
	t.Cleanup(hs.Close)
	names := []string{"A", "B", "C"}
	caches := map[string]*Cache{}
	clients := map[string]*http.Client{}
	for _, n := range names {
		c := newCache(t, srv.Client(t), a.fetcher(), fastOpts()...)
		caches[n] = c
		clients[n] = &http.Client{Transport: replicaHeader{n, c.Transport(nil)}}
	}
	get := func(n string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hs.URL, nil)
		resp, err := clients[n].Do(req)
		if err != nil {
			t.Errorf("replica %s: %v", n, err)
			return 0
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	for _, n := range names {
		if code := get(n); code != http.StatusOK {
			t.Fatalf("replica %s: status %d before any revocation", n, code)
		}
	}
	if got := a.minted.Load(); got != 1 {
		t.Fatalf("issuer calls = %d before any revocation, want 1", got)
	}

	// A's request with T1 reaches the API and waits there.
	a.armed.Store(true)
	resA := make(chan int, 1)
	go func() { resA <- get("A") }()
	select {
	case <-a.arrived:
	case <-ctx.Done():
		t.Fatal("A's request never reached the API")
	}

	// T1 is revoked; B replaces it with T2, which the API accepts.
	a.revokeAll()
	for i := range 5 {
		if code := get("B"); code != http.StatusOK {
			t.Fatalf("B's request %d after T1's revocation: status %d", i, code)
		}
	}
	if got := a.minted.Load(); got != 2 {
		t.Fatalf("issuer calls = %d after T1's revocation, want 2", got)
	}
	t2 := "api-token-2"
	if got := a.replicasAccepted(t2); got != 1 {
		t.Fatalf("T2 accepted from %d replicas, want B alone", got)
	}
	waitFleetAccepted(t, caches["B"], t2)

	// T2 is revoked before A's request with T1 is answered.
	a.revokeAll()
	close(a.release)
	if code := <-resA; code != http.StatusUnauthorized {
		t.Fatalf("A's caller got %d; want the 401 of its one retry, with T2 revoked between its try and its retry", code)
	}

	// No hold follows: every replica's next request invalidates T2 or
	// gets T3, and succeeds.
	for _, n := range []string{"A", "C", "B", "A", "C", "B"} {
		if code := get(n); code != http.StatusOK {
			t.Errorf("replica %s after T2's revocation: status %d, want 200 (T3)", n, code)
		}
	}
	if got := a.minted.Load(); got != 3 {
		t.Errorf("issuer calls = %d in all, want 3", got)
	}
	for _, n := range names {
		if held := caches[n].Stats().RejectionsHeld; held != 0 {
			t.Errorf("replica %s held %d 401s, want none", n, held)
		}
		if hold, _, _ := caches[n].server.mem.verdict401(Token{AccessToken: "never-seen"}); hold {
			t.Errorf("replica %s holds the 401s of tokens it has not seen accepted", n)
		}
	}
}

// waitFleetAccepted waits until the fleet knows that the API accepted tok
// from c's replica (c's mark is written off the request path).
func waitFleetAccepted(t interface {
	Helper()
	Fatalf(string, ...any)
}, c *Cache, tok string) {
	t.Helper()
	fp := Token{AccessToken: tok}.Fingerprint()
	e := c.server
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitBound)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if s := e.mem.served(); s != nil && s.fp == fp {
			if ok, err := c.st.accepted(ctx, e.k, s.gen, fp); err == nil && ok {
				return
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("timed out waiting for the fleet to record that the API accepted %s", tok)
		}
	}
}
