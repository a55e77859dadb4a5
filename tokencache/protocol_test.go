package tokencache

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/faultproxy"
	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// This file pins the protocol's promises where real deployments differ
// from the happy path: issuers that hand back the same token, replicas
// whose clocks differ, key TTLs that outlive their tokens, lease holders
// paused past their lease, retried scripts and users who come and go.
// Every test runs on a real redis-server: the behaviour under test is
// Redis's (TIME, PTTL, script atomicity).

// reusingFetcher is an issuer that hands back the token it issued last
// while that token lives, as many client-credentials servers do. now is
// the replica's clock: a fetcher computes Expiry from expires_in on it.
type reusingFetcher struct {
	mu    sync.Mutex // guards tok, trueExp
	calls atomic.Int64
	life  time.Duration
	tok   string
	// trueExp is the token's expiry on the true clock (the issuer's).
	trueExp time.Time
}

func (f *reusingFetcher) issue() (string, time.Duration) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if f.tok == "" || !now.Before(f.trueExp.Add(-f.life/2)) {
		f.tok = fmt.Sprintf("reused-token-%d", now.UnixNano())
		f.trueExp = now.Add(f.life)
	}
	return f.tok, f.trueExp.Sub(now)
}

// replicaFetcher is one replica's view of an issuer: it answers
// expires_in, and the replica computes the expiry on its own clock.
type replicaFetcher struct {
	issuer interface {
		issue() (string, time.Duration)
	}
	offset time.Duration
}

func (r replicaFetcher) Identity() string { return "test-credential" }

func (r replicaFetcher) Fetch(ctx context.Context) (Token, error) {
	tok, expiresIn := r.issuer.issue()
	return Token{AccessToken: tok, TokenType: "Bearer", Expiry: time.Now().Add(r.offset).Add(expiresIn)}, nil
}

// freshIssuer mints a new token on every call.
type freshIssuer struct {
	calls atomic.Int64
	life  time.Duration
}

func (f *freshIssuer) issue() (string, time.Duration) {
	n := f.calls.Add(1)
	return fmt.Sprintf("fresh-token-%d-%d", n, time.Now().UnixNano()), f.life
}

func TestReissuedTokenIsServedAfterInvalidation(t *testing.T) {
	rdb, _ := realBackend(t)
	ctx := ctxT(t)
	f := &reusingFetcher{life: time.Hour}
	var caches []*Cache
	for range 3 {
		c, err := New(redis.NewClient(&redis.Options{Addr: rdb.(*redis.Client).Options().Addr}), replicaFetcher{issuer: f}, fastOpts()...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		caches = append(caches, c)
	}
	tok, err := caches[0].Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range caches[1:] {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("issuer calls before the invalidation = %d, want 1", n)
	}
	if ok, err := caches[0].Invalidate(ctx, tok); err != nil || !ok {
		t.Fatalf("Invalidate = %v, %v; want true", ok, err)
	}
	for i := range 60 {
		got, err := caches[i%3].Token(ctx)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if got.AccessToken != tok.AccessToken {
			t.Fatalf("call %d: served another token than the issuer's", i)
		}
	}
	if n := f.calls.Load() - 1; n > 1 {
		t.Errorf("issuer calls after one invalidation = %d, want at most 1 for the fleet (the issuer hands back the same token)", n)
	}
}

func TestFastClockReplicaDoesNotMakeTheFleetRefresh(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	const life = 2 * time.Second
	issuer := &freshIssuer{life: life}
	var caches []*Cache
	for i, off := range []time.Duration{time.Minute, 0, 0, 0} {
		opts := fastOpts(WithTuning(Tuning{ExpirySkew: 100 * time.Millisecond}), WithOwner(fmt.Sprint("replica-", i)))
		if off != 0 {
			opts = append(opts, withClock(offsetClock(off)))
		}
		caches = append(caches, newCache(t, s.Client(t), replicaFetcher{issuer: issuer, offset: off}, opts...))
	}
	start := time.Now()
	for i := 0; time.Since(start) < 3*life; i++ {
		c := caches[i%len(caches)]
		tok, err := c.Token(ctx)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if now := c.now(); !tok.Expiry.After(now) {
			t.Fatalf("call %d: replica %d served a token whose Expiry %v is not after its clock's now %v", i, i%len(caches), tok.Expiry, now)
		}
		time.Sleep(5 * time.Millisecond) // the callers' pace, not a wait for a condition
	}
	// Refresh-ahead at half the life: about one renewal per life/2, plus
	// the first token; one more for the renewal in flight at the end.
	elapsed := time.Since(start)
	want := int64(elapsed/(life/2)) + 2
	if n := issuer.calls.Load(); n > want {
		t.Errorf("issuer calls = %d in %v with one replica a minute fast, want at most %d (one per renewal)", n, elapsed.Round(time.Millisecond), want)
	}
}

func TestKeyTTLOutlivingItsTokenIsNotServed(t *testing.T) {
	cases := []struct {
		name    string
		stretch func(t *testing.T, s *redistest.Server, key string)
	}{
		{"pexpire", func(t *testing.T, s *redistest.Server, key string) {
			if err := s.Client(t).PExpire(context.Background(), key, 30*time.Second).Err(); err != nil {
				t.Fatal(err)
			}
		}},
		{"persist", func(t *testing.T, s *redistest.Server, key string) {
			// No TTL at all: a hand edit. Garbage, refetched.
			if err := s.Client(t).Persist(context.Background(), key).Err(); err != nil {
				t.Fatal(err)
			}
		}},
		{"restart with appendonly", func(t *testing.T, s *redistest.Server, key string) {
			s.Restart()
			if err := s.Client(t).PExpire(context.Background(), key, 30*time.Second).Err(); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := redistest.Start(t, "--appendonly", "yes")
			ctx := ctxT(t)
			const life = time.Second
			issuer := &freshIssuer{life: life}
			opts := fastOpts(WithTuning(Tuning{ExpirySkew: 50 * time.Millisecond}))
			a := newCache(t, s.Client(t), replicaFetcher{issuer: issuer}, opts...)
			first, err := a.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			key, _, _, _ := a.Keys()
			_ = a.Close() // no refresh ahead: the stretched key stays as it is
			tc.stretch(t, s, key)
			// Let the token expire at the issuer: the behaviour under test
			// is what a replica does with a key that outlives its token.
			time.Sleep(time.Until(first.Expiry) + 50*time.Millisecond)
			b := newCache(t, s.Client(t), replicaFetcher{issuer: issuer}, opts...)
			got, err := b.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got.AccessToken == first.AccessToken || !got.Expiry.After(time.Now()) {
				t.Fatalf("a new replica was served the token that expired at %v (now %v)", first.Expiry, time.Now())
			}
			if n := issuer.calls.Load(); n != 2 {
				t.Errorf("issuer calls = %d, want 2 (the first token, then one refresh)", n)
			}
		})
	}
}

func TestOnlyTheLeaseHolderDrawsAndWrites(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	rdb := s.Client(t)
	c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts()...)
	e := c.server
	paused, err := c.locker.TryAcquire(ctx, e.k.Lock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = paused.Release(ctx) }()
	// The holder is paused past its lease: the lock expires and another
	// replica takes it.
	if err := rdb.Del(ctx, e.k.Lock).Err(); err != nil {
		t.Fatal(err)
	}
	other, err := lock.New(rdb, lock.WithTTL(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	current, err := other.TryAcquire(ctx, e.k.Lock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = current.Release(ctx) }()

	gen, _, err := e.rf.begin(ctx, paused, 0, true, false)
	if err != nil || gen >= 0 {
		t.Fatalf("the paused holder drew generation %d (err %v); want the lease reported lost", gen, err)
	}
	if n, _ := rdb.Get(ctx, e.k.Fence).Int64(); n != 0 {
		t.Fatalf("fence = %d after the paused holder's begin, want 0 (nothing drawn)", n)
	}
	tok := Token{AccessToken: "paused-token", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}
	rec := newRecord(tok, 1, time.Now(), time.Hour, "paused", e.cred.fingerprint())
	w, err := e.rf.write(ctx, paused, &rec, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if w.Stored || !w.LeaseLost {
		t.Fatalf("the paused holder's write = %+v, want refused with the lease lost", w)
	}
	if n, _ := rdb.Exists(ctx, e.k.Token).Result(); n != 0 {
		t.Fatal("the paused holder's token was stored")
	}
	// The current holder draws and writes.
	gen, _, err = e.rf.begin(ctx, current, 0, true, false)
	if err != nil || gen != 1 {
		t.Fatalf("the current holder drew %d, %v; want 1", gen, err)
	}
	rec = newRecord(tok, gen, time.Now(), time.Hour, "current", e.cred.fingerprint())
	if w, err := e.rf.write(ctx, current, &rec, time.Hour, false); err != nil || !w.Stored {
		t.Fatalf("the current holder's write = %+v, %v; want stored", w, err)
	}
}

func TestIssuerCallStopsWhenTheLeaseIsLost(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	rdb := s.Client(t)
	var calls, cancelled atomic.Int64
	// The issuer never answers this replica: only the lease's loss ends
	// the call.
	hung := FetcherFunc(func(ctx context.Context) (Token, error) {
		calls.Add(1)
		<-ctx.Done()
		cancelled.Add(1)
		return Token{}, ctx.Err()
	})
	paused := newCache(t, rdb, identified{hung}, fastOpts(WithTuning(Tuning{LockTTL: 600 * time.Millisecond, RefreshTimeout: time.Minute}))...)
	key, lockKey, _, _ := paused.Keys()
	done := make(chan Token, 1)
	errs := make(chan error, 1)
	go func() {
		tok, err := paused.Token(ctx)
		errs <- err
		done <- tok
	}()
	eventually(t, "the issuer call", func() bool { return calls.Load() == 1 })
	// Another owner takes the lock from under the holder (as after a pause
	// past its lease): the watchdog's next beat finds it lost, and the
	// issuer call is cancelled.
	if err := rdb.Set(ctx, lockKey, "another-owner", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the issuer call to be cancelled", func() bool { return cancelled.Load() == 1 })
	if n, _ := rdb.Exists(ctx, key).Result(); n != 0 {
		t.Fatal("a token was stored by a holder that lost its lease")
	}
	// The other owner stores its token under its lease and publishes it:
	// the caller that was waiting on the paused holder's refresh is served
	// that token.
	e := paused.server
	drew, err := paused.st.begin(ctx, e.k, "another-owner", 0, nil, nil)
	gen := drew.Generation
	if err != nil || gen <= 0 {
		t.Fatalf("the other owner's draw: %d, %v", gen, err)
	}
	want := Token{AccessToken: "the-other-owners-token", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}
	rec := newRecord(want, gen, time.Now(), 59*time.Minute, "other", e.cred.fingerprint())
	ev := protocol.Event{Type: protocol.EventRefreshed, Key: key, Generation: gen, TokenFP: rec.TokenFP, Origin: "other"}
	if w, err := paused.st.write(ctx, e.k, rec, 59*time.Minute, ev, "another-owner"); err != nil || !w.Stored {
		t.Fatalf("the other owner's write: %+v, %v", w, err)
	}
	if err := <-errs; err != nil {
		t.Fatalf("the caller of the paused holder got %v, want the new owner's token", err)
	}
	if got := <-done; got.AccessToken != want.AccessToken {
		t.Fatalf("the caller of the paused holder got another token than the fleet's")
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("the paused holder called its issuer %d times, want 1", n)
	}
}

// identified gives a FetcherFunc the credential identity of the suite's
// fake fetchers, so that replicas with either share tokens.
type identified struct{ FetcherFunc }

func (identified) Identity() string { return "test-credential" }
func TestRetriedScriptsAreIdempotent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		ctx := ctxT(t)
		c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts()...)
		e := c.server
		lease, err := c.locker.TryAcquire(ctx, e.k.Lock)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = lease.Release(ctx) }()
		b := c.budget
		// The client resends the begin script after a lost reply: the same
		// generation, counted once in the budget and the fence.
		r1, err := c.st.begin(ctx, e.k, lease.Value(), 0, b, nil)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := c.st.begin(ctx, e.k, lease.Value(), 0, b, nil)
		if err != nil {
			t.Fatal(err)
		}
		g1, g2 := r1.Generation, r2.Generation
		if g1 != 1 || g2 != g1 {
			t.Fatalf("generations %d then %d, want 1 twice", g1, g2)
		}
		if r1.Budget == nil || r1.Budget.Counted != 1 || !r2.Replayed || r2.Budget == nil || !r2.Budget.Allowed || r2.Budget.Counted != 0 {
			t.Fatalf("begin replies %+v then %+v, want 1 counted then a replay (already counted)", r1, r2)
		}
		if n, _ := rdb.Get(ctx, b.key).Int64(); n != 1 {
			t.Fatalf("budget key = %d, want 1", n)
		}
		if n, _ := rdb.Get(ctx, e.k.Fence).Int64(); n != 1 {
			t.Fatalf("fence = %d, want 1", n)
		}
		// The client resends the write after a lost reply: stored, not
		// fenced out by itself.
		tok := Token{AccessToken: "t1", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}
		rec := newRecord(tok, g1, time.Now(), time.Hour, "h", e.cred.fingerprint())
		ev := protocol.Event{Type: protocol.EventRefreshed, Key: e.k.Token}
		w1, err := c.st.write(ctx, e.k, rec, time.Hour, ev, lease.Value())
		if err != nil || !w1.Stored {
			t.Fatalf("first write = %+v, %v", w1, err)
		}
		w2, err := c.st.write(ctx, e.k, rec, time.Hour, ev, lease.Value())
		if err != nil || !w2.Stored || w2.StoredMS != w1.StoredMS {
			t.Fatalf("retried write = %+v, %v; want reported stored at %d", w2, err, w1.StoredMS)
		}
	})
}

func TestEveryPerUserKeyExpires(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	rdb := s.Client(t)
	c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithClientTokens(func(string) (Fetcher, error) {
		return newFakeFetcher(time.Hour), nil
	}, 5))...)
	for i := range 40 {
		if _, err := clientToken(c, ctx, fmt.Sprint("user-", i)); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	iter := rdb.Scan(ctx, 0, "tokencache:*", 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if len(keys) < 80 {
		t.Fatalf("found %d keys, want a token and a fence for each of 40 users", len(keys))
	}
	for _, k := range keys {
		ttl, err := rdb.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl < 0 {
			t.Errorf("key %s has no TTL: it would stay in Redis after its user left", k)
		}
	}
}

func TestWriteWhoseReplyIsLostIsStoredOnce(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	p, err := faultproxy.New(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	// go-redis's defaults for what matters here: a command whose reply
	// times out is sent again on a new connection.
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr, ReadTimeout: 300 * time.Millisecond, MaxRetries: 3, Protocol: 2})
	t.Cleanup(func() { _ = rdb.Close() })
	f := newFakeFetcher(time.Hour)
	gate := make(chan struct{})
	f.setGate(gate)
	c := newCache(t, rdb, f, fastOpts()...)
	done := make(chan error, 1)
	var got Token
	go func() {
		var err error
		got, err = c.Token(ctx)
		done <- err
	}()
	eventually(t, "the issuer call", func() bool { return f.calls.Load() == 1 })
	// The write script's reply ({"stored", generation, published, stored
	// ms}) is lost after the script ran: the client times out and sends it
	// again.
	p.SwallowReply([]byte("*4\r\n$6\r\nstored\r\n"))
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if p.Swallowed() != 1 {
		t.Fatal("the write's reply was not lost: the test tested nothing")
	}
	st := c.Stats()
	if st.FencedWrites != 0 || st.Refreshes != 1 || f.calls.Load() != 1 {
		t.Fatalf("after a retried write: fenced %d, refreshes %d, issuer calls %d; want 0, 1, 1", st.FencedWrites, st.Refreshes, f.calls.Load())
	}
	direct := s.Client(t)
	key, _, fence, _ := c.Keys()
	if n, _ := direct.Get(ctx, fence).Int64(); n != 1 {
		t.Errorf("fence = %d, want 1: a retried script drew no second generation", n)
	}
	st2, err := c.Inspect(ctx)
	if err != nil || st2.TokenFingerprint != got.Fingerprint() || st2.Generation != 1 {
		t.Errorf("stored %s gen %d (%v), want the served token %s at generation 1 (key %s)", st2.TokenFingerprint, st2.Generation, err, got.Fingerprint(), key)
	}
}

func TestLostWriteWithSkewedClocksKeepsTheNewerToken(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	rdb := s.Client(t)
	issuer := &freshIssuer{life: time.Hour}
	fast := newCache(t, s.Client(t), replicaFetcher{issuer: issuer, offset: time.Minute},
		fastOpts(withClock(offsetClock(time.Minute)))...)
	slow := newCache(t, s.Client(t), replicaFetcher{issuer: issuer, offset: -time.Minute},
		fastOpts(withClock(offsetClock(-time.Minute)))...)
	t1, err := fast.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key, _, fenceKey, _ := fast.Keys()
	older, err := rdb.Get(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	// The slow-clock replica refreshes: generation 2, stored later by
	// Redis's clock, though its writer's clock says two minutes earlier.
	res, err := slow.Refresh(ctx, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	t2 := res.Token
	eventually(t, "the fast replica to take the refreshed token", func() bool {
		got, err := fast.Token(ctx)
		return err == nil && got.AccessToken == t2.AccessToken
	})
	// Redis loses the write (a failover before replication): the older
	// token and its generation are back, the fence with them.
	if err := rdb.Set(ctx, key, older, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, fenceKey, 1, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	fast.sub.onSubscribed() // a re-subscription: each replica re-checks Redis
	slow.sub.onSubscribed()
	for i := range 50 {
		for _, c := range []*Cache{fast, slow} {
			got, err := c.Token(ctx)
			if err != nil || got.AccessToken != t2.AccessToken {
				t.Fatalf("call %d after the lost write: %v, %v; want the newer token the replicas hold, not %v", i, got, err, t1)
			}
		}
	}
	// The next refresh orders its token after everything the fleet holds.
	res, err = fast.Refresh(ctx, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Generation <= 2 {
		t.Errorf("the refresh after the lost write stored generation %d, want above the held 2", res.Generation)
	}
	for _, c := range []*Cache{fast, slow} {
		eventually(t, "every replica to take the new token", func() bool {
			got, err := c.Token(ctx)
			return err == nil && got.AccessToken == res.Token.AccessToken
		})
	}
	if n := issuer.calls.Load(); n != 3 {
		t.Errorf("issuer calls = %d, want 3 (first, forced refresh, refresh after the lost write)", n)
	}
}

// storeAsLaggingRedisWould rewrites the stored value as a promoted node whose clock lags by lag would
// present it: same stored_ms (old master's clock), PTTL and TIME-based
// remaining both longer by lag. Equivalent here: shift stored_ms and PTTL
// forward by lag on the real clock.
func storeAsLaggingRedisWould(t *testing.T, rdb *redis.Client, key string, expiredAgo, lag time.Duration) string {
	ctx := context.Background()
	raw, err := rdb.Get(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatal(err)
	}
	tm, _ := rdb.Time(ctx).Result()
	now := tm
	life := time.Hour
	skew := 30 * time.Second
	exp := now.Add(-expiredAgo)
	issued := exp.Add(-life)
	ttl := life - skew
	m["expires_at"] = exp.UTC().Format(protocol.ExpiryLayout)
	m["issued_at"] = issued.UTC().Format(protocol.ExpiryLayout)
	m["ttl_ms"] = ttl.Milliseconds()
	// on the old master's (true) clock it was stored at issued; the new
	// master's clock is lag behind, so it reads stored_ms as lag later
	m["stored_ms"] = issued.Add(lag).UnixMilli()
	left := exp.Add(-skew).Sub(now) + lag
	b, _ := json.Marshal(m)
	if err := rdb.Set(ctx, key, b, left).Err(); err != nil {
		t.Fatal(err)
	}
	return m["access_token"].(string)
}

func TestRedisClockLaggingBeyondTheToleranceIsCaught(t *testing.T) {
	for _, tc := range []struct {
		name            string
		expiredAgo, lag time.Duration
	}{
		{"lag 5m, issuer expiry 110s ago (beyond the clock tolerance)", 110 * time.Second, 5 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := redistest.Start(t)
			ctx := ctxT(t)
			rdb := s.Client(t)
			a := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts()...)
			if _, err := a.Token(ctx); err != nil {
				t.Fatal(err)
			}
			key, _, _, _ := a.Keys()
			_ = a.Close()
			at := storeAsLaggingRedisWould(t, rdb, key, tc.expiredAgo, tc.lag)
			f := newFakeFetcher(time.Hour)
			b := newCache(t, s.Client(t), f, fastOpts()...)
			for i := 0; i < 3; i++ {
				got, err := b.Token(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if got.AccessToken == at {
					t.Errorf("call %d: served the token whose issuer expiry passed %v ago; its Expiry says %v from now (issuer calls %d)",
						i, tc.expiredAgo, time.Until(got.Expiry).Round(time.Second), f.calls.Load())
				}
			}
		})
	}
}

// The ACL rule of the previous release (no +time): what an upgrade meets.

// An ACL rule of the previous release (no +time): Redis answers, so the
// fleet degrades to PTTL-only ages instead of failing open.
func TestACLRuleWithoutTimeDegrades(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	admin := s.Client(t)
	if err := admin.Do(ctx, "ACL", "SETUSER", "tokencache", "on", ">pw", "resetchannels", "~tokencache:*", "&tokencache:*",
		"-@all", "+get", "+set", "+del", "+pttl", "+pexpire", "+incr", "+evalsha", "+eval", "+publish", "+subscribe", "+ping").Err(); err != nil {
		t.Fatal(err)
	}
	f := newFakeFetcher(time.Hour)
	var caches []*Cache
	for range 3 {
		c := newCache(t, redis.NewClient(&redis.Options{Addr: s.Addr, Username: "tokencache", Password: "pw"}), f, fastOpts()...)
		caches = append(caches, c)
	}
	for _, c := range caches {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var fo uint64
	for _, c := range caches {
		fo += c.Stats().FailOpen
	}
	if n := f.calls.Load(); n != 1 || fo != 0 {
		t.Errorf("issuer calls = %d for 3 replicas (fail-open %d): Redis answers but NOPERM on TIME counted as Redis down", n, fo)
	}
}
