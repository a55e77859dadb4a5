package tokencache

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/faultproxy"
	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

func TestStampedeOneIssuerCall(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		f := newFakeFetcher(time.Hour)
		f.setDelay(50 * time.Millisecond)
		const replicas, callers = 5, 20
		caches := make([]*Cache, replicas)
		for i := range caches {
			caches[i] = newCache(t, rdb, f, fastOpts()...)
		}
		ctx := ctxT(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		seen := map[string]int{}
		errs := make(chan error, replicas*callers)
		for _, c := range caches {
			for range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tok, err := c.Token(ctx)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					seen[tok.AccessToken]++
					mu.Unlock()
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("Token: %v", err)
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("issuer calls = %d, want 1", got)
		}
		if len(seen) != 1 {
			t.Errorf("distinct tokens = %d, want 1", len(seen))
		}
	})
}

func TestRedisLayout(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		ctx := ctxT(t)
		sub := rdb.Subscribe(ctx, "tokencache:{payments}:events")
		defer sub.Close()
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		f := newFakeFetcher(time.Hour)
		c := newCache(t, rdb, f, fastOpts(WithNamespace("payments"))...)
		tok, err := c.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := rdb.Get(ctx, "tokencache:{payments}:server").Result()
		if err != nil {
			t.Fatalf("GET server key: %v", err)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(raw), &v); err != nil {
			t.Fatalf("value is not JSON: %v", err)
		}
		for _, field := range []string{"access_token", "token_type", "expires_at", "issued_at", "generation", "refreshed_by", "fingerprint"} {
			if _, ok := v[field]; !ok {
				t.Errorf("value lacks %q: %s", field, raw)
			}
		}
		if v["access_token"] != tok.AccessToken {
			t.Errorf("stored token differs from the returned one")
		}
		if strings.Contains(raw, f.id) {
			t.Errorf("credential identity leaked into redis: %s", raw)
		}
		pttl := rdb.PTTL(ctx, "tokencache:{payments}:server").Val()
		want := time.Hour - defaultExpirySkew
		if pttl <= want-time.Minute || pttl > want {
			t.Errorf("PTTL = %v, want about %v (expiry minus skew)", pttl, want)
		}
		if n, _ := rdb.Get(ctx, "tokencache:{payments}:server:fence").Int64(); n != 1 {
			t.Errorf("fence = %d, want 1", n)
		}
		if n := rdb.Exists(ctx, "tokencache:{payments}:server:lock").Val(); n != 0 {
			t.Errorf("lock still held after refresh")
		}
		msg, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(msg.Payload, tok.AccessToken) {
			t.Errorf("event carries the token: %s", msg.Payload)
		}
		ev, ok := protocol.DecodeEvent(msg.Payload)
		if !ok || ev.Type != protocol.EventRefreshed || ev.Generation != 1 || ev.Key != "tokencache:{payments}:server" {
			t.Errorf("event = %+v, want refreshed generation 1 for the server key", ev)
		}
	})
}

func TestNeverServesExpiredToken(t *testing.T) {
	rdb, mr := miniBackend(t)
	clock := newFakeClock()
	f := newFakeFetcher(10 * time.Minute)
	f.now = clock.Now
	c := newCache(t, rdb, f, fastOpts(withClock(clock), WithTuning(Tuning{RefreshJitter: -1}))...)
	ctx := ctxT(t)
	first, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Stop the issuer: refresh-ahead will fail, so the old token is served
	// until its skewed expiry and never after.
	f.failNext(errorsN(10, &issuerErr{code: "internal-server-error", retryable: true})...)
	skew := defaultExpirySkew // under the cap of a fifth of 10 minutes
	for _, step := range []time.Duration{4 * time.Minute, 3 * time.Minute, 2*time.Minute + 29*time.Second} {
		clock.Advance(step)
		mr.FastForward(step)
		tok, err := c.Token(ctx)
		if err != nil {
			t.Fatalf("after %v: %v", step, err)
		}
		if tok.AccessToken != first.AccessToken {
			t.Fatalf("token changed while the issuer was failing")
		}
		if !clock.Now().Before(tok.Expiry.Add(-skew + time.Second)) {
			t.Fatalf("served a token past its skewed expiry")
		}
	}
	clock.Advance(2 * time.Second)
	mr.FastForward(2 * time.Second)
	tok, err := c.Token(ctx)
	if err == nil && tok.AccessToken == first.AccessToken {
		t.Fatalf("served the old token after its skewed expiry")
	}
}

func errorsN(n int, err error) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

func TestRefreshAheadDoesNotBlockCallers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, mr *miniredis.Miniredis) {
		// miniredis: a fake clock and FastForward; redis-server: real time
		// with a short-lived token (4s: TTL 3.2s, due after 2s), where
		// advance sleeps: real expiry on a real server is the subject.
		life, wait := time.Hour, 40*time.Minute
		var cl clock = systemClock{}
		now, advance := time.Now, time.Sleep
		if mr != nil {
			clock := newFakeClock()
			cl, now = clock, clock.Now
			advance = func(d time.Duration) { clock.Advance(d); mr.FastForward(d) }
		} else {
			life, wait = 4*time.Second, 2300*time.Millisecond
		}
		f := newFakeFetcher(life)
		f.now = now
		c := newCache(t, rdb, f, fastOpts(withClock(cl), WithTuning(Tuning{RefreshJitter: -1}), WithRefreshAhead(0.5))...)
		ctx := ctxT(t)
		first, err := c.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		gate := make(chan struct{})
		f.setGate(gate)
		advance(wait) // past half of its life, still valid
		// While the background refresh is blocked at the issuer, every
		// caller gets the current token at once.
		for i := range 100 {
			tok, err := c.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tok.AccessToken != first.AccessToken {
				t.Fatalf("call %d: got a different token during refresh-ahead", i)
			}
		}
		eventually(t, "the background refresh to reach the issuer", func() bool { return f.calls.Load() == 2 })
		if tok, err := c.Token(ctx); err != nil || tok.AccessToken != first.AccessToken {
			t.Fatalf("while the issuer is busy: %v, %v; want the current token", tok, err)
		}
		close(gate)
		eventually(t, "the refreshed token to replace the old one", func() bool {
			tok, err := c.Token(ctx)
			return err == nil && tok.AccessToken != first.AccessToken
		})
		if got := f.calls.Load(); got != 2 {
			t.Errorf("issuer calls = %d, want 2", got)
		}
		if w := c.Stats().Waits; w != 0 {
			t.Errorf("callers waited %d times, want 0", w)
		}
	})
}

func TestRefreshAheadOneReplicaRefreshesOthersFollow(t *testing.T) {
	rdb, _ := realBackend(t)
	f := newFakeFetcher(3 * time.Second)
	var caches []*Cache
	for range 5 {
		caches = append(caches, newCache(t, rdb, f, fastOpts(WithRefreshAhead(0.3))...))
	}
	ctx := ctxT(t)
	for _, c := range caches {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Keep asking for about two lifetimes: nobody may see an error.
	start := time.Now()
	deadline := start.Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, c := range caches {
			if _, err := c.Token(ctx); err != nil {
				t.Fatalf("Token during refresh-ahead: %v", err)
			}
		}
		time.Sleep(2 * time.Millisecond) // the callers' pace: the subject is a rate of calls
	}
	// One call per refresh for the whole fleet: one per 0.9-1.2s here
	// (30% of 3s, plus up to 10% jitter), plus the first.
	elapsed := time.Since(start)
	if got, max := f.calls.Load(), int64(elapsed/(900*time.Millisecond))+2; got > max {
		t.Errorf("issuer calls = %d over %v with refresh-ahead, want at most %d", got, elapsed, max)
	}
	if waits := total(caches, func(s Stats) uint64 { return s.Waits }); waits != 0 {
		t.Errorf("callers waited %d times in steady state, want 0", waits)
	}
}

func TestLostEventWaiterStillCompletes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		f := newFakeFetcher(time.Hour)
		gate := make(chan struct{})
		f.setGate(gate)
		holder := newCache(t, rdb, f, fastOpts()...)
		// The waiter hears Redis through a proxy that drops every pub/sub
		// message: it stays subscribed and never hears the holder.
		px, err := faultproxy.New(rdb.(*redis.Client).Options().Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { px.Close() })
		px.DropMessages()
		wc := redis.NewClient(&redis.Options{Addr: px.Addr})
		t.Cleanup(func() { wc.Close() })
		waiter := newCache(t, wc, f, fastOpts()...)
		ctx := ctxT(t)
		got := make(chan error, 1)
		go func() { _, err := holder.Token(ctx); got <- err }()
		eventually(t, "the holder to call the issuer", func() bool { return f.calls.Load() == 1 })
		res := make(chan Token, 1)
		go func() {
			tok, err := waiter.Token(ctx)
			if err != nil {
				t.Errorf("waiter: %v", err)
			}
			res <- tok
		}()
		eventually(t, "the waiter to wait", func() bool { return waiter.Stats().Waits > 0 })
		close(gate)
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		tok := <-res
		if tok.AccessToken == "" {
			t.Fatal("waiter got no token")
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("issuer calls = %d, want 1", got)
		}
		if waiter.Stats().Events != 0 || px.Dropped() == 0 {
			t.Errorf("the waiter received %d events; the proxy dropped %d, want every one", waiter.Stats().Events, px.Dropped())
		}
	})
}

func TestFailureFansOutToWaiters(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		f := newFakeFetcher(time.Hour)
		gate := make(chan struct{})
		f.setGate(gate)
		f.failNext(&issuerErr{code: "invalid-grant"})
		// Waiters would re-check only after an hour: only the event can
		// bring them the error before the refresh timeout.
		opts := []Option{WithTuning(Tuning{WaitRecheck: time.Hour, RefreshTimeout: 30 * time.Second, LockTTL: 2 * time.Second})}
		holder := newCache(t, rdb, f, opts...)
		var waiters []*Cache
		for range 3 {
			waiters = append(waiters, newCache(t, rdb, f, opts...))
		}
		ctx := ctxT(t)
		herr := make(chan error, 1)
		go func() { _, err := holder.Token(ctx); herr <- err }()
		eventually(t, "the holder to call the issuer", func() bool { return f.calls.Load() == 1 })
		werrs := make(chan error, len(waiters))
		for _, w := range waiters {
			go func() { _, err := w.Token(ctx); werrs <- err }()
		}
		eventually(t, "every waiter to wait", func() bool {
			for _, w := range waiters {
				if w.Stats().Waits == 0 {
					return false
				}
			}
			return true
		})
		close(gate)
		if err := <-herr; !isFetchError(err, "invalid-grant", false) {
			t.Fatalf("holder: got %v, want a local FetchError invalid-grant", err)
		}
		for range waiters {
			err := <-werrs
			if !isFetchError(err, "invalid-grant", true) {
				t.Errorf("waiter: got %v, want a remote FetchError invalid-grant", err)
			}
		}
		// The negative cache: nobody calls the issuer again at once.
		for _, c := range append(waiters, holder) {
			if _, err := c.Token(ctx); !isFetchError(err, "invalid-grant", err != nil && !isFetchError(err, "invalid-grant", false)) {
				t.Errorf("during the negative window: got %v, want the FetchError", err)
			}
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("issuer calls = %d, want 1", got)
		}
	})
}

func TestNegativeCacheExpires(t *testing.T) {
	rdb, mr := miniBackend(t)
	clock := newFakeClock()
	f := newFakeFetcher(time.Hour)
	f.now = clock.Now
	f.failNext(&issuerErr{code: "access-denied"})
	c := newCache(t, rdb, f, fastOpts(withClock(clock), WithTuning(Tuning{NegativeTTL: 5 * time.Second}))...)
	ctx := ctxT(t)
	for range 3 {
		if _, err := c.Token(ctx); !isFetchError(err, "access-denied", false) {
			t.Fatalf("got %v, want FetchError access-denied", err)
		}
	}
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("issuer calls in the negative window = %d, want 1", got)
	}
	clock.Advance(6 * time.Second)
	mr.FastForward(6 * time.Second) // the fleet's failure key ages on Redis's clock
	if _, err := c.Token(ctx); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if got := f.calls.Load(); got != 2 {
		t.Errorf("issuer calls = %d, want 2", got)
	}
}

func TestRetryableErrorsAreRetried(t *testing.T) {
	cases := []struct {
		name      string
		errs      []error
		wantCalls int64
		wantErr   string
	}{
		{"two 5xx then success", []error{&issuerErr{code: "internal-server-error", retryable: true}, &issuerErr{code: "internal-server-error", retryable: true}}, 3, ""},
		{"429 honouring Retry-After", []error{&issuerErr{code: "too-many-requests", retryable: true, after: 10 * time.Millisecond}}, 2, ""},
		{"permanent stops at once", []error{&issuerErr{code: "invalid-grant"}}, 1, "invalid-grant"},
		{"retries are capped", errorsN(5, &issuerErr{code: "internal-server-error", retryable: true}), 3, "internal-server-error"},
		{"plain errors count as retryable", []error{errors.New("connection reset")}, 2, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rdb, _ := miniBackend(t)
			f := newFakeFetcher(time.Hour)
			f.failNext(tc.errs...)
			c := newCache(t, rdb, f, fastOpts()...)
			_, err := c.Token(ctxT(t))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Token: %v", err)
			case tc.wantErr != "" && !isFetchError(err, tc.wantErr, false):
				t.Fatalf("Token: got %v, want FetchError %s", err, tc.wantErr)
			}
			if got := f.calls.Load(); got != tc.wantCalls {
				t.Errorf("issuer calls = %d, want %d", got, tc.wantCalls)
			}
		})
	}
}

func TestFailedRefreshKeepsValidToken(t *testing.T) {
	rdb, _ := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	c := newCache(t, rdb, f, fastOpts()...)
	ctx := ctxT(t)
	first, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.failNext(&issuerErr{code: "access-denied"})
	if _, err := c.Refresh(ctx, 0, true); !isFetchError(err, "access-denied", false) {
		t.Fatalf("forced refresh: got %v, want FetchError access-denied", err)
	}
	raw, _ := rdb.Get(ctx, "tokencache:{default}:server").Result()
	if !strings.Contains(raw, first.AccessToken) {
		t.Fatalf("the valid cached token was destroyed by a failed refresh")
	}
	if tok, err := c.Token(ctx); err != nil || tok.AccessToken != first.AccessToken {
		t.Fatalf("Token after a failed refresh: %v, %v; want the old token", tok, err)
	}
}

func TestCallerCancellationDoesNotFailOthers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		f := newFakeFetcher(time.Hour)
		gate := make(chan struct{})
		f.setGate(gate)
		c := newCache(t, rdb, f, fastOpts()...)
		ctx1, cancel1 := context.WithCancel(context.Background())
		first := make(chan error, 1)
		go func() { _, err := c.Token(ctx1); first <- err }()
		eventually(t, "the refresh to reach the issuer", func() bool { return f.calls.Load() == 1 })
		second := make(chan error, 1)
		go func() { _, err := c.Token(ctxT(t)); second <- err }()
		cancel1()
		if err := <-first; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled caller: got %v, want context.Canceled", err)
		}
		close(gate)
		if err := <-second; err != nil {
			t.Fatalf("the other caller failed with the first caller's cancellation: %v", err)
		}
		eventually(t, "the lock to be released", func() bool {
			return rdb.Exists(context.Background(), "tokencache:{default}:server:lock").Val() == 0
		})
		if got := f.calls.Load(); got != 1 {
			t.Errorf("issuer calls = %d, want 1", got)
		}
	})
}

func TestInvalidateIsCompareAndDelete(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		f := newFakeFetcher(time.Hour)
		a := newCache(t, rdb, f, fastOpts()...)
		b := newCache(t, rdb, f, fastOpts()...)
		ctx := ctxT(t)
		old, err := a.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Token(ctx); err != nil {
			t.Fatal(err)
		}
		ok, err := a.Invalidate(ctx, old)
		if err != nil || !ok {
			t.Fatalf("Invalidate(current) = %v, %v; want true", ok, err)
		}
		// b dropped its copy on the event: its next Token gets a new one.
		eventually(t, "b to drop the invalidated token", func() bool { return b.server.mem.l1.Load() == nil })
		fresh, err := b.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if fresh.AccessToken == old.AccessToken {
			t.Fatal("got the invalidated token again")
		}
		// A stale 401 report must not delete the new token.
		ok, err = a.Invalidate(ctx, old)
		if err != nil || ok {
			t.Fatalf("Invalidate(stale) = %v, %v; want false", ok, err)
		}
		if tok, err := a.Token(ctx); err != nil || tok.AccessToken != fresh.AccessToken {
			t.Fatalf("after a stale invalidation: %v, %v; want the fresh token", tok, err)
		}
		if got := f.calls.Load(); got != 2 {
			t.Errorf("issuer calls = %d, want 2", got)
		}
	})
}

func TestGarbageInRedisIsAMiss(t *testing.T) {
	key := "tokencache:{default}:server"
	valid := func(mut func(map[string]any)) string {
		v := map[string]any{
			"access_token": "hand", "token_type": "Bearer",
			"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
			"issued_at":  time.Now().UTC().Format(time.RFC3339), "generation": 1,
			"fingerprint": identityFingerprint(newFakeFetcher(0), nil),
		}
		mut(v)
		b, _ := json.Marshal(v)
		return string(b)
	}
	cases := []struct {
		name  string
		write func(ctx context.Context, rdb redis.UniversalClient) error
	}{
		{"not JSON", func(ctx context.Context, r redis.UniversalClient) error {
			return r.Set(ctx, key, "hello", time.Hour).Err()
		}},
		{"JSON array", func(ctx context.Context, r redis.UniversalClient) error {
			return r.Set(ctx, key, "[1,2]", time.Hour).Err()
		}},
		{"wrong field type", func(ctx context.Context, r redis.UniversalClient) error {
			return r.Set(ctx, key, valid(func(v map[string]any) { v["generation"] = "seven" }), time.Hour).Err()
		}},
		{"expiry in the past", func(ctx context.Context, r redis.UniversalClient) error {
			return r.Set(ctx, key, valid(func(v map[string]any) {
				v["expires_at"] = "2001-01-01T00:00:00Z"
				v["issued_at"] = "2000-12-31T23:00:00Z"
			}), time.Hour).Err()
		}},
		{"no TTL", func(ctx context.Context, r redis.UniversalClient) error {
			return r.Set(ctx, key, valid(func(map[string]any) {}), 0).Err()
		}},
		{"TTL longer than the token", func(ctx context.Context, r redis.UniversalClient) error {
			return r.Set(ctx, key, valid(func(map[string]any) {}), 48*time.Hour).Err()
		}},
		{"huge value", func(ctx context.Context, r redis.UniversalClient) error {
			return r.Set(ctx, key, strings.Repeat("x", protocol.MaxValueSize+1), time.Hour).Err()
		}},
		{"a hash, not a string", func(ctx context.Context, r redis.UniversalClient) error {
			return r.HSet(ctx, key, "access_token", "x").Err()
		}},
		{"another credential's token", func(ctx context.Context, r redis.UniversalClient) error {
			return r.Set(ctx, key, valid(func(v map[string]any) { v["fingerprint"] = "sha256:0000000000000000" }), time.Hour).Err()
		}},
	}
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				ctx := ctxT(t)
				rdb.Del(ctx, key)
				if err := tc.write(ctx, rdb); err != nil {
					t.Fatal(err)
				}
				f := newFakeFetcher(time.Hour)
				c := newCache(t, rdb, f, fastOpts()...)
				tok, err := c.Token(ctx)
				if err != nil {
					t.Fatalf("Token: %v", err)
				}
				if tok.AccessToken == "hand" {
					t.Fatal("served the unusable value")
				}
				if got := f.calls.Load(); got != 1 {
					t.Errorf("issuer calls = %d, want 1", got)
				}
				if c.Stats().BadValues == 0 && tc.name != "another credential's token" {
					t.Errorf("the bad value was not counted")
				}
				st, err := c.Inspect(ctx)
				if err != nil || !st.Found {
					t.Errorf("Inspect after the refetch: %+v, %v", st, err)
				}
			})
		}
	})
}

func TestFencingRejectsLateWriter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		ctx := ctxT(t)
		slow := newFakeFetcher(time.Hour)
		gate := make(chan struct{})
		slow.setGate(gate)
		paused := newCache(t, rdb, slow, fastOpts()...)
		late := make(chan Token, 1)
		go func() {
			tok, err := paused.Token(ctx)
			if err != nil {
				t.Errorf("paused holder: %v", err)
			}
			late <- tok
		}()
		eventually(t, "the first holder to call the issuer", func() bool { return slow.calls.Load() == 1 })
		// The holder "pauses" past its lease: its lock vanishes as if it
		// had expired, and another replica takes over.
		if err := rdb.Del(ctx, "tokencache:{default}:server:lock").Err(); err != nil {
			t.Fatal(err)
		}
		fast := newFakeFetcher(time.Hour)
		other := newCache(t, rdb, fast, fastOpts()...)
		newer, err := other.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		close(gate) // the paused holder wakes and tries to write
		got := <-late
		if got.AccessToken != newer.AccessToken {
			t.Errorf("the late holder returned its own token, want the newer fleet token")
		}
		raw, _ := rdb.Get(ctx, "tokencache:{default}:server").Result()
		if !strings.Contains(raw, newer.AccessToken) {
			t.Fatalf("the late write overwrote the newer token: %s", raw)
		}
		if paused.Stats().FencedWrites != 1 {
			t.Errorf("fenced writes = %d, want 1", paused.Stats().FencedWrites)
		}
	})
}

func TestFenceLostIsRaised(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	f := newFakeFetcher(time.Hour)
	c := newCache(t, rdb, f, fastOpts()...)
	for range 3 {
		if _, err := c.Refresh(ctx, 0, true); err != nil {
			t.Fatal(err)
		}
	}
	rdb.Del(ctx, "tokencache:{default}:server:fence") // evicted
	res, err := c.Refresh(ctx, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Refreshed || res.Generation != 4 {
		t.Errorf("refresh after losing the fence: %+v, want refreshed at generation 4", res)
	}
}

func TestRefreshCron(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		ctx := ctxT(t)
		f := newFakeFetcher(time.Hour)
		var wg sync.WaitGroup
		results := make(chan RefreshResult, 10)
		for range 10 {
			c := newCache(t, rdb, f, fastOpts()...)
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := c.Refresh(ctx, 10*time.Minute, false)
				if err != nil {
					t.Errorf("Refresh: %v", err)
				}
				results <- res
			}()
		}
		wg.Wait()
		close(results)
		refreshed := 0
		for r := range results {
			if r.Refreshed {
				refreshed++
			}
			if r.Generation != 1 || r.ExpiresIn < 50*time.Minute {
				t.Errorf("result %+v, want generation 1 with most of an hour left", r)
			}
		}
		// Generations count refreshes, not lock grants.
		if refreshed != 1 || f.calls.Load() != 1 {
			t.Errorf("refreshed %d times with %d issuer calls, want 1 and 1", refreshed, f.calls.Load())
		}
		c := newCache(t, rdb, f, fastOpts()...)
		if res, err := c.Refresh(ctx, 2*time.Hour, false); err != nil || !res.Refreshed || res.Generation != 2 {
			t.Errorf("min-ttl above the remaining TTL: %+v, %v; want a refresh to generation 2", res, err)
		}
		if res, err := c.Refresh(ctx, 0, true); err != nil || !res.Refreshed || res.Generation != 3 {
			t.Errorf("forced: %+v, %v; want a refresh to generation 3", res, err)
		}
	})
}

func TestOfferNewestExpiryWins(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		ctx := ctxT(t)
		f := newFakeFetcher(time.Hour)
		c := newCache(t, rdb, f, fastOpts()...)
		other := newCache(t, rdb, f, fastOpts()...)
		cur, err := c.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		later := Token{AccessToken: "rotated-later", TokenType: "Bearer", Expiry: cur.Expiry.Add(10 * time.Minute)}
		earlier := Token{AccessToken: "rotated-earlier", TokenType: "Bearer", Expiry: cur.Expiry.Add(5 * time.Minute)}
		if ok, err := c.Offer(ctx, later); err != nil || !ok {
			t.Fatalf("Offer(later) = %v, %v; want stored", ok, err)
		}
		if ok, err := c.Offer(ctx, earlier); err != nil || ok {
			t.Fatalf("Offer(earlier, arriving second) = %v, %v; want rejected", ok, err)
		}
		if ok, err := c.Offer(ctx, Token{AccessToken: "x", Expiry: time.Now().Add(-time.Minute)}); err == nil || ok {
			t.Fatalf("Offer(expired) = %v, %v; want an error", ok, err)
		}
		eventually(t, "the other replica to pick up the rotated token", func() bool {
			tok, err := other.Token(ctx)
			return err == nil && tok.AccessToken == later.AccessToken
		})
		st, _ := c.Inspect(ctx)
		if st.Generation != 2 {
			t.Errorf("generation after rotation = %d, want 2", st.Generation)
		}
	})
}

func TestFailOpenWhenRedisIsDown(t *testing.T) {
	rdb, mr := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	c := newCache(t, rdb, f, fastOpts()...)
	closed := newCache(t, rdb, f, fastOpts(WithFailOpen(false))...)
	mr.Close()
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Token(ctx); err != nil {
				t.Errorf("fail-open Token: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := f.calls.Load(); got != 1 {
		t.Errorf("issuer calls while redis is down = %d, want 1 (singleflight)", got)
	}
	if _, err := closed.Token(ctx); !errors.Is(err, ErrRedisUnavailable) {
		t.Errorf("fail-closed Token: got %v, want ErrRedisUnavailable", err)
	}
	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the token to be written back", func() bool {
		_, _ = c.Token(ctx) // write-back runs in the background of calls
		return mr.Exists("tokencache:{default}:server")
	})
	if got := f.calls.Load(); got != 1 {
		t.Errorf("issuer calls after write-back = %d, want 1", got)
	}
}

func TestOptionsAreValidated(t *testing.T) {
	rdb, _ := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	for _, o := range []Option{
		WithNamespace(""), WithNamespace("a}b"), WithNamespace("a b"), WithNamespace(strings.Repeat("n", 129)),
		WithKeyPrefix("x{"), WithRefreshAhead(1), WithRefreshAhead(0),
		WithTuning(Tuning{RefreshJitter: 0.7}), WithTuning(Tuning{LockTTL: time.Millisecond}),
		WithTuning(Tuning{RetryAttempts: -1}), WithTuning(Tuning{ExpirySkew: -2}),
		WithTuning(Tuning{RefreshTimeout: -time.Second}), WithTuning(Tuning{WaitRecheck: -time.Second}),
		WithTuning(Tuning{NegativeTTL: -time.Second}), WithTuning(Tuning{L1MaxAge: -1}),
	} {
		if _, err := New(rdb, f, o); err == nil {
			t.Errorf("an invalid option was accepted")
		}
	}
	if _, err := New(nil, f); err == nil {
		t.Error("New(nil client) succeeded")
	}
	if _, err := New(rdb, nil); err == nil {
		t.Error("New(nil fetcher) succeeded")
	}
}

func TestIssuerReturnsUnusableToken(t *testing.T) {
	rdb, _ := miniBackend(t)
	for _, tc := range []struct {
		name string
		tok  Token
	}{
		{"empty", Token{Expiry: time.Now().Add(time.Hour)}},
		{"no expiry", Token{AccessToken: "x"}},
		{"expired", Token{AccessToken: "x", Expiry: time.Now().Add(-time.Second)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache(t, rdb, FetcherFunc(func(context.Context) (Token, error) { return tc.tok, nil }),
				fastOpts(WithNamespace("bad-"+strings.ReplaceAll(tc.name, " ", "-")))...)
			_, err := c.Token(ctxT(t))
			if !errors.Is(err, ErrInvalidToken) {
				t.Errorf("got %v, want ErrInvalidToken", err)
			}
		})
	}
}

func TestFetcherPanicIsAnError(t *testing.T) {
	rdb, _ := miniBackend(t)
	c := newCache(t, rdb, FetcherFunc(func(context.Context) (Token, error) { panic("boom") }), fastOpts()...)
	if _, err := c.Token(ctxT(t)); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Errorf("got %v, want an error saying the fetcher panicked", err)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	rdb, _ := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	c, err := New(rdb, f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	c.server.mem.l1.Store(nil)
	if _, err := c.Token(ctxT(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Token after Close: got %v, want ErrClosed", err)
	}
}

func TestTokenRedaction(t *testing.T) {
	tok := Token{AccessToken: "super-secret-value", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}
	for _, s := range []string{
		tok.String(), tok.GoString(),
		sprintf("%v", tok), sprintf("%+v", tok), sprintf("%#v", tok), sprintf("%s", tok), sprintf("%q", tok),
		sprintf("%v", &tok), sprintf("%v", []Token{tok}),
	} {
		if strings.Contains(s, "super-secret-value") {
			t.Errorf("formatted token leaks it: %s", s)
		}
	}
	if got := tok.HeaderValue(); got != "Bearer super-secret-value" {
		t.Errorf("HeaderValue = %q", got)
	}
}

func TestLockWatchdogKeepsSecondReplicaOut(t *testing.T) {
	// An issuer slower than the lock TTL must not let a second replica in.
	rdb, _ := realBackend(t)
	f := newFakeFetcher(time.Hour)
	f.setDelay(1500 * time.Millisecond)
	opts := []Option{WithTuning(Tuning{LockTTL: 300 * time.Millisecond, WaitRecheck: 50 * time.Millisecond})}
	a := newCache(t, rdb, f, opts...)
	b := newCache(t, rdb, f, opts...)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for _, c := range []*Cache{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Token(ctx); err != nil {
				t.Errorf("Token: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := f.calls.Load(); got != 1 {
		t.Errorf("issuer calls = %d, want 1 (the watchdog must hold the lock)", got)
	}
	_ = lock.DefaultTTL
}

// A hand-written value with a high generation that the reader treats as
// unusable (here: no TTL) is overwritten by the next refresh, not left to
// fence every write forever so that nothing is shared.
func TestUnusableValueWithAHighGenerationDoesNotFenceEveryWrite(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	key := "tokencache:{default}:server"
	f := newFakeFetcher(time.Hour)
	v, _ := json.Marshal(map[string]any{"access_token": "hand", "token_type": "Bearer",
		"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		"issued_at":  time.Now().UTC().Format(time.RFC3339), "generation": 100,
		"fingerprint": identityFingerprint(f, nil)})
	rdb.Set(ctx, key, v, 0) // hand SET without EX
	c := newCache(t, rdb, f, fastOpts(withL1(false))...)
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

// With Redis down, the copy a fail-open fetch keeps in memory is served
// no later than the token's expiry (skewed), however long Redis stays
// down.
func TestFailOpenNeverServesATokenPastItsExpiry(t *testing.T) {
	rdb, mr := miniBackend(t)
	mr.Close() // Redis down
	ctx := ctxT(t)
	clk := newFakeClock()
	f := newFakeFetcher(2 * time.Second)
	f.now = clk.Now
	c := newCache(t, rdb, f, withClock(clk), WithTuning(Tuning{WaitRecheck: 10 * time.Second, LockTTL: time.Second, RetryAttempts: 1, RetryBase: time.Millisecond, RetryMax: time.Millisecond}))
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
