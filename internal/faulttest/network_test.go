package faulttest

import (
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/faultproxy"
	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache"
)

// Scenario 10: Redis is slow (the proxy adds 200ms to every chunk, each
// way) and connections are dropped mid-command (the proxy closes every
// connection every 250ms), while short-lived tokens are refreshed and
// callers keep asking. No caller gets an expired token, no caller gets an
// untyped error, nothing panics, and issuer calls stay within the
// refresh-ahead cycles plus one fail-open fetch per replica per phase in
// which Redis failed.
func TestSlowAndDroppedRedis(t *testing.T) {
	const (
		life     = 3 * time.Second
		share    = 0.5
		replicas = 6
	)
	srv := redistest.Start(t)
	proxy, err := faultproxy.New(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	is := newIssuer(t, life)
	cfg := baseConfig(proxy.Addr, is.URL)
	cfg.LockTTL = 3 * time.Second
	cfg.FetchTimeout = 2 * time.Second
	cfg.RefreshAhead = share
	var caches []*tokencache.Cache
	for range replicas {
		caches = append(caches, newCache(t, proxy.Addr, cfg))
	}

	start := time.Now()
	stop := make(chan struct{})
	collect := callLoop(caches, 2, 5*time.Millisecond, 5*time.Second, stop)
	dropping := func(d time.Duration) {
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			time.Sleep(250 * time.Millisecond)
			proxy.DropAll()
		}
	}
	// The sleeps below are the fault schedule: phases of real time with
	// the callers running, each fault held for its phase.
	faultPhases := 0
	time.Sleep(time.Second)
	proxy.SetDelay(200 * time.Millisecond) // slow
	faultPhases++
	time.Sleep(2500 * time.Millisecond)
	proxy.SetDelay(0)
	time.Sleep(time.Second)
	faultPhases++
	dropping(2500 * time.Millisecond) // dropped
	faultPhases++
	proxy.SetDelay(200 * time.Millisecond) // both
	dropping(2 * time.Second)
	proxy.SetDelay(0)
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	calls := collect()
	elapsed := time.Since(start)

	byClass := map[string]int{}
	served := 0
	for _, c := range calls {
		if c.err != nil {
			byClass[classify(c.err)]++
			if classify(c.err) == "other" {
				t.Errorf("untyped error: %v", c.err)
			}
			continue
		}
		served++
		if !c.end.Before(c.tok.Expiry) {
			t.Errorf("a caller got a token %v after its expiry", c.end.Sub(c.tok.Expiry))
		}
	}
	var failOpen uint64
	for _, c := range caches {
		failOpen += c.Stats().FailOpen
	}
	// Refresh-ahead replaces a token once share·life of it has passed:
	// ⌊elapsed/(share·life)⌋ + 1 tokens, the first included. Each fault
	// phase may cost each replica one direct fetch (fail-open) and one
	// refresh lost to a dropped write.
	minted := is.minted.Load()
	cycles := int64(elapsed/time.Duration(share*float64(life))) + 1
	bound := cycles + int64(faultPhases*(replicas+1))
	t.Logf("%v: %d calls served, errors by class %v; %d tokens minted (refresh-ahead cycles %d, bound %d), %d issuer calls, %d fail-open fetches",
		elapsed.Round(time.Millisecond), served, byClass, minted, cycles, bound, is.calls.Load(), failOpen)
	if minted > bound {
		t.Errorf("tokens minted = %d, want at most %d", minted, bound)
	}
	if served == 0 {
		t.Error("no call was served")
	}
}
