// Regression tests for the findings of the review of the core (one per
// finding); each failed before its fix.
package tokencache

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// R1: closing one replica while it refreshes publishes a PERMANENT failure
// (context.Canceled is non-retryable) to the whole fleet, which then
// negative-caches it for negativeTTL without calling the issuer.
func TestRegressionCloseDuringRefreshPoisonsFleet(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	fA := newFakeFetcher(time.Hour)
	fA.setGate(make(chan struct{})) // A's issuer call hangs
	a, _ := New(rdb, fA, fastOpts()...)
	fB := newFakeFetcher(time.Hour)
	b := newCache(t, rdb, fB, fastOpts()...)
	a.waitSubscribed(ctx, time.Second)
	b.waitSubscribed(ctx, time.Second)

	go func() { _, _ = a.Token(context.Background()) }()
	eventually(t, "A calls the issuer", func() bool { return fA.calls.Load() == 1 })

	errc := make(chan error, 1)
	go func() { _, err := b.Token(ctx); errc <- err }()
	eventually(t, "B waits", func() bool { return b.Stats().Waits > 0 })
	_ = a.Close() // e.g. SIGTERM during a rolling deploy

	err := <-errc
	t.Logf("B's waiter got: %v", err)
	_, err2 := b.Token(ctx)
	t.Logf("B's next call got: %v (B issuer calls=%d)", err2, fB.calls.Load())
	if err != nil || err2 != nil {
		t.Errorf("a peer's shutdown failed the fleet: %v / %v", err, err2)
	}
}

// R2: a "failed" event's retry_at is the publisher's wall clock, trusted
// unbounded; while it lasts slow() answers without even reading Redis,
// although a valid token is stored there.
func TestRegressionRemoteRetryAtUnbounded(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	a := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts()...)
	if _, err := a.Token(ctx); err != nil { // a valid token is now in Redis
		t.Fatal(err)
	}
	b := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts()...)
	b.waitSubscribed(ctx, time.Second)
	ev, _ := json.Marshal(protocol.Event{Type: protocol.EventFailed, Key: "tokencache:{default}:server", Code: "access-denied",
		RetryInMS: (24 * time.Hour).Milliseconds(), Origin: "hostile-peer"}) // any PUBLISH
	rdb.Publish(ctx, "tokencache:{default}:events", ev)
	eventually(t, "event", func() bool { return b.Stats().Events > 0 })
	time.Sleep(50 * time.Millisecond)
	if _, err := b.Token(ctx); err != nil {
		t.Errorf("valid token in Redis, but Token failed: %v (redis reads=%d)", err, b.Stats().RedisReads)
	}
}

// R3: a hand-written value with a high generation that the reader treats as
// garbage (here: no TTL) is never overwritten: the write script answers "stale" forever,
// so every refresh is fenced and nothing is shared.
func TestRegressionGarbageWithHighGenerationFencesForever(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	key := "tokencache:{default}:server"
	f := newFakeFetcher(time.Hour)
	v, _ := json.Marshal(map[string]any{"access_token": "hand", "token_type": "Bearer",
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		"issued_at":  time.Now().UTC().Format(time.RFC3339), "generation": 100,
		"fingerprint": identityFingerprint(f, nil)})
	rdb.Set(ctx, key, v, 0) // hand SET without EX
	c := newCache(t, rdb, f, fastOpts(WithL1(false))...)
	for i := 0; i < 5; i++ {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := rdb.Get(ctx, key).Result()
	t.Logf("issuer calls=%d fenced=%d; value still hand-written: %v", f.calls.Load(), c.Stats().FencedWrites, got == string(v))
	if f.calls.Load() != 1 {
		t.Errorf("issuer calls = %d for 5 Token calls, want 1", f.calls.Load())
	}
}

// R4: fail-open (and write-failure) snapshots set softUntil past validUntil;
// the hot path then serves a token past its skewed AND its issuer expiry.
func TestRegressionFailOpenServesExpired(t *testing.T) {
	rdb, mr := miniBackend(t)
	mr.Close() // Redis down
	ctx := ctxT(t)
	clk := newFakeClock()
	f := newFakeFetcher(2 * time.Second)
	f.now = clk.Now
	c := newCache(t, rdb, f, withClock(clk), WithWaitRecheck(10*time.Second), WithLockTTL(time.Second),
		WithRetry(1, time.Millisecond, time.Millisecond))
	tok, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(5 * time.Second) // 3s past the issuer's expiry
	tok2, err := c.Token(ctx)
	if err == nil && tok2.AccessToken == tok.AccessToken {
		t.Errorf("served %v at %v, i.e. after its expiry", tok2, clk.Now().UTC())
	}
}

// R5: per-user keys "{ns/user}" and the events channel "{ns}" are passed to one
// script: CROSSSLOT on Redis Cluster, so client tokens are never stored.
func TestRegressionClusterClientTokens(t *testing.T) {
	s := redistest.Start(t, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(t.TempDir(), "nodes.conf"))
	ctx := ctxT(t)
	plain := redis.NewClient(&redis.Options{Addr: s.Addr})
	if err := plain.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "cluster ok", func() bool {
		info, _ := plain.ClusterInfo(ctx).Result()
		return strings.Contains(info, "cluster_state:ok")
	})
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{s.Addr}})
	defer cc.Close()
	defer plain.Close()
	var calls [2]int
	mk := func(i int) *Cache {
		return newCache(t, cc, newFakeFetcher(time.Hour), fastOpts(WithClientTokens(func(u string) (Fetcher, error) {
			calls[i]++
			return newFakeFetcher(time.Hour), nil
		}, 0))...)
	}
	a, b := mk(0), mk(1)
	r := cc.Eval(ctx, "return 1", []string{"tokencache:{default/alice}:client", "tokencache:{default}:events"})
	t.Logf("direct eval: %v", r.Err())
	ta, errA := clientToken(a, ctx, "alice")
	tb, errB := clientToken(b, ctx, "alice")
	n, _ := cc.Exists(ctx, "tokencache:{default/alice}:client").Result()
	t.Logf("errA=%v errB=%v sameToken=%v keyExists=%d", errA, errB, ta.AccessToken == tb.AccessToken, n)
	if n == 0 || ta.AccessToken != tb.AccessToken {
		t.Errorf("client token not shared on cluster")
	}
	u, _ := a.User("alice")
	_, err := u.Invalidate(ctx, ta)
	t.Logf("Invalidate: %v", err)
	// server token works
	if _, err := a.Token(ctx); err != nil {
		t.Errorf("server token: %v", err)
	}
}

// R6: TokenSource recomputes the skew from the REMAINING life, not the
// lifetime the writer used, so oauth2's reuse outlives the cache's skewed expiry.
func TestRegressionTokenSourceSkew(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	f := newFakeFetcher(time.Hour)
	key := "tokencache:{default}:server"
	now := time.Now()
	exp := now.Add(60 * time.Second)
	rec := newRecord(Token{AccessToken: "t", Expiry: exp}, 1, now.Add(-59*time.Minute), 0, "w", identityFingerprint(f, nil))
	b, _ := json.Marshal(rec)
	rdb.Set(ctx, key, b, 30*time.Second) // what the writer set: 60s left - 30s skew
	c := newCache(t, rdb, f, fastOpts()...)
	ot, err := c.TokenSource(ctx).Token()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cache serves until ~%v from now; oauth2 Expiry %v from now (Valid() until %v)",
		30*time.Second, time.Until(ot.Expiry).Round(time.Second), (time.Until(ot.Expiry) - 10*time.Second).Round(time.Second))
	if time.Until(ot.Expiry)-10*time.Second > 31*time.Second {
		t.Errorf("oauth2 would reuse the token past the cache's skewed expiry")
	}
}
