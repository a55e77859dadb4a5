package faulttest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testutil"
	"github.com/tokencache/tokencache/tokencache"
)

// Scenario 7: the issuer answers a permanent error (400 invalid-grant).
// The holder and every waiting replica (separate processes) get the typed
// error from the one issuer answer, and so does an idle replica that
// asks during the negative-cache window; nobody calls the issuer again in
// that window. Waiters poll far less often than their caller timeout, so
// one that returns the error heard it from the "failed" event.
func TestPermanentErrorReachesEveryReplica(t *testing.T) {
	srv := redistest.Start(t)
	is := newIssuer(t, time.Hour)
	is.setMode(modeInvalidGrant)
	cfg := baseConfig(srv.Addr, is.URL)
	cfg.WaitRecheck = time.Minute
	cfg.NegativeTTL = time.Minute
	ops := newCache(t, srv.Addr, cfg)
	_, _, _, channel := ops.Keys()
	holder := startReplica(t, "holder", cfg)
	var waiters []*replica
	for _, name := range []string{"w1", "w2", "w3"} {
		waiters = append(waiters, startReplica(t, name, cfg))
	}
	idle := startReplica(t, "idle", cfg)
	waitSubscribers(t, srv.Client(t), channel, int64(len(waiters)+3))

	release := is.holdNext()
	h := holder.get(30 * time.Second)
	testutil.Eventually(t, "the holder to call the issuer", func() bool { return is.calls.Load() == 1 })
	var gets []pending
	for _, w := range waiters {
		gets = append(gets, w.get(10*time.Second))
	}
	for _, w := range waiters {
		testutil.Eventually(t, "replica "+w.name+" to wait", func() bool { return w.stats().Waits > 0 })
	}
	release()

	check := func(who string, res result, remote bool) {
		t.Helper()
		if !res.Received || res.Class != "fetch" || res.Code != "invalid-grant" || res.Remote != remote {
			t.Errorf("%s: got %v, want a FetchError [invalid-grant] with Remote %t", who, res, remote)
		}
	}
	check("holder", h.wait(time.Minute), false)
	answered := is.lastAnswer()
	for i, g := range gets {
		res := g.wait(time.Minute)
		check("waiter "+waiters[i].name, res, true)
		t.Logf("waiter %s had the error %v after the issuer's answer", waiters[i].name, res.At.Sub(answered).Round(time.Microsecond))
	}

	// In the negative-cache window every replica, the idle one included,
	// answers from memory.
	for range 3 {
		check("holder, in the window", holder.get(10*time.Second).wait(time.Minute), false)
		for _, r := range append(waiters, idle) {
			check(r.name+", in the window", r.get(10*time.Second).wait(time.Minute), true)
		}
	}
	if got := is.calls.Load(); got != 1 {
		t.Errorf("issuer calls = %d, want 1", got)
	}
}

// A replica that starts during the negative-cache window did not hear the
// "failed" event, and nothing in Redis records the failure: it calls the
// issuer again. A crash-looping fleet (pods restarted because they cannot
// get a token) therefore calls the issuer once per start, limited only by
// the issuer budget.
func TestPermanentErrorLateJoiner(t *testing.T) {
	srv := redistest.Start(t)
	is := newIssuer(t, time.Hour)
	is.setMode(modeInvalidGrant)
	cfg := baseConfig(srv.Addr, is.URL)
	cfg.NegativeTTL = time.Minute
	first := startReplica(t, "first", cfg)
	if res := first.get(10 * time.Second).wait(time.Minute); res.Code != "invalid-grant" {
		t.Fatalf("first replica: got %v, want invalid-grant", res)
	}
	late := startReplica(t, "late", cfg)
	if res := late.get(10 * time.Second).wait(time.Minute); res.Code != "invalid-grant" {
		t.Fatalf("late replica: got %v, want invalid-grant", res)
	}
	if got := is.calls.Load(); got != 1 {
		t.Errorf("issuer calls = %d, want 1 (the late replica inside the window must not call)", got)
	}
}

// call is one Token call seen by a test's caller loop.
type call struct {
	start, end time.Time
	tok        tokencache.Token
	err        error
}

// callLoop calls c.Token from n goroutines, each every ~every with a
// per-call timeout, until stop is closed; it returns every call.
func callLoop(caches []*tokencache.Cache, n int, every, timeout time.Duration, stop <-chan struct{}) func() []call {
	var mu sync.Mutex // guards calls
	var calls []call
	var wg sync.WaitGroup
	for _, c := range caches {
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), timeout)
					start := time.Now()
					tok, err := c.Token(ctx)
					cl := call{start: start, end: time.Now(), tok: tok, err: err}
					cancel()
					mu.Lock()
					calls = append(calls, cl)
					mu.Unlock()
					select {
					case <-stop:
						return
					case <-time.After(every):
					}
				}
			}()
		}
	}
	return func() []call {
		wg.Wait()
		return calls
	}
}

// Scenario 6: a storm of issuer 503s (with Retry-After) and hung calls
// (client timeouts) starts while a token is valid. Every caller keeps
// getting that token until it expires (retries run in the background,
// with capped exponential backoff and jitter); afterwards callers get a
// typed *FetchError, never a hang and never the expired token. Issuer
// calls stay bounded, and once the issuer heals one refresh recovers.
func TestIssuerStorm(t *testing.T) {
	const life = 4 * time.Second
	srv := redistest.Start(t)
	is := newIssuer(t, life)
	cfg := baseConfig(srv.Addr, is.URL)
	cfg.FetchTimeout = 300 * time.Millisecond
	cfg.Attempts, cfg.BackoffBase, cfg.BackoffMax = 3, 50*time.Millisecond, 400*time.Millisecond
	cfg.RefreshAhead = 0.5
	cfg.WaitRecheck = 100 * time.Millisecond
	const replicas = 4
	var caches []*tokencache.Cache
	for range replicas {
		caches = append(caches, newCache(t, srv.Addr, cfg))
	}
	ctx := ctxFor(t, time.Minute)
	first, err := caches[0].Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range caches {
		if tok, err := c.Token(ctx); err != nil || tok.AccessToken != first.AccessToken {
			t.Fatalf("before the storm: %v, %v; want the first token", tok, err)
		}
	}

	is.setMode(modeStorm)
	stormStart := time.Now()
	// The token is served until its expiry less the skew (a fifth of a
	// short token's life); margin covers the Redis round trip that
	// measured the key's TTL.
	servedUntil := first.Expiry.Add(-life / 5)
	const margin = 500 * time.Millisecond
	stop := make(chan struct{})
	collect := callLoop(caches, 2, 10*time.Millisecond, 10*time.Second, stop)
	time.Sleep(time.Until(servedUntil.Add(2 * time.Second))) // real expiry is the subject: callers run past it
	close(stop)
	calls := collect()
	stormEnd := time.Now()
	callsInStorm := is.calls.Load() - 1

	var served, failed int
	var callsAfterExpiry int
	for _, c := range calls {
		switch {
		case c.err == nil:
			served++
			if c.tok.AccessToken != first.AccessToken {
				t.Errorf("during the storm a caller got %s, want the first token %s", c.tok.Fingerprint(), first.Fingerprint())
			}
			if !c.end.Before(c.tok.Expiry) {
				t.Errorf("a caller got a token %v after its expiry", c.end.Sub(c.tok.Expiry))
			}
			if c.start.After(servedUntil.Add(margin)) {
				t.Errorf("a call starting %v after the TTL's end got a token", c.start.Sub(servedUntil))
			}
		default:
			failed++
			var fe *tokencache.FetchError
			if !errors.As(c.err, &fe) {
				t.Errorf("a caller got %v (%s), want a *tokencache.FetchError", c.err, classify(c.err))
			}
			if c.end.Before(servedUntil.Add(-margin)) {
				t.Errorf("a caller got an error %v before the valid token's TTL ended: %v", servedUntil.Sub(c.end), c.err)
			}
			if c.start.After(servedUntil) {
				callsAfterExpiry++
			}
		}
	}
	if served == 0 || failed == 0 {
		t.Errorf("%d calls served, %d failed; want both (the token, then errors once it expired)", served, failed)
	}
	// Bound: the lock lets one refresh run at a time in the whole fleet,
	// each makes at most Attempts calls, and each lasts at least
	// min(FetchTimeout, BackoffMax): in this storm every refresh either
	// hits a hung call (cut at FetchTimeout) or a 503 whose Retry-After
	// (1s, capped at BackoffMax) it honours before the next call. So
	// calls ≤ Attempts · (storm / min(FetchTimeout, BackoffMax) + 1).
	stormDur := stormEnd.Sub(stormStart)
	bound := int64(cfg.Attempts * (int(stormDur/min(cfg.FetchTimeout, cfg.BackoffMax)) + 1))
	t.Logf("storm of %v: %d calls served the valid token, %d got a FetchError (%d of them started after the TTL ended); issuer called %d times (bound %d)",
		stormDur.Round(time.Millisecond), served, failed, callsAfterExpiry, callsInStorm, bound)
	if callsInStorm > bound {
		t.Errorf("issuer calls during the storm = %d, want at most %d", callsInStorm, bound)
	}

	// The issuer heals: once the fleet's back-off window from the storm
	// ends (at most 30s), one refresh, and every replica has the new token.
	is.setMode(modeOK)
	mintedBefore := is.minted.Load()
	var tok tokencache.Token
	// A wait on a condition that keeps the last answer for the report below.
	for deadline := time.Now().Add(40 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var fe *tokencache.FetchError
		if tok, err = caches[0].Token(ctx); err == nil || !errors.As(err, &fe) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("after the storm: %v", err)
	}
	for _, c := range caches[1:] {
		if got, err := c.Token(ctx); err != nil || got.AccessToken != tok.AccessToken {
			t.Errorf("after the storm: %v, %v; want the new token", got, err)
		}
	}
	if got := is.minted.Load() - mintedBefore; got != 1 {
		t.Errorf("tokens minted after the storm = %d, want 1", got)
	}
}
