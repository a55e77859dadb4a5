package tokencache

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/faultproxy"
	"github.com/tokencache/tokencache/internal/redistest"
)

// A half-open subscription (writes accepted, nothing delivered) is not
// noticed by go-redis's health check; the cache's probe must notice it and
// subscribe again, and events must flow afterwards.
func TestHalfOpenSubscriptionIsReplaced(t *testing.T) {
	f := newFakeFetcher(time.Hour)
	a, b, _ := halfOpen(t, f, []Option{WithTuning(Tuning{ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond})}, nil)
	ctx := ctxT(t)
	if _, err := b.Refresh(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the cache to replace its silent subscription", func() bool { return a.Stats().Resubscribes > 0 })
	eventsFlow(t, a, b)
}

// halfOpen starts replica a behind a fault proxy and replica b on Redis
// directly (fastOpts plus aOpts, bOpts), has a take its first token and
// subscribe, then turns a's connections half-open: what a sends reaches
// Redis, nothing comes back.
func halfOpen(t *testing.T, f Fetcher, aOpts, bOpts []Option) (a, b *Cache, first Token) {
	t.Helper()
	srv := redistest.Start(t)
	proxy, err := faultproxy.New(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	viaProxy := redis.NewClient(&redis.Options{Addr: proxy.Addr, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { _ = viaProxy.Close() })
	a = newCache(t, viaProxy, f, fastOpts(aOpts...)...)
	b = newCache(t, srv.Client(t), f, fastOpts(bOpts...)...)
	ctx := ctxT(t)
	if first, err = a.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if !a.sub.waitSubscribed(ctx, 5*time.Second) {
		t.Fatal("never subscribed")
	}
	if n := proxy.SwallowExisting(); n == 0 {
		t.Fatal("no connection to make half-open")
	}
	return a, b, first
}

// eventsFlow checks that b's refreshes reach a by event, after a replaced
// its subscription: a then serves b's newest token.
func eventsFlow(t *testing.T, a, b *Cache) {
	t.Helper()
	ctx := ctxT(t)
	// The re-subscription count goes up when the new subscription is
	// asked for, not when it is confirmed: an event published in between
	// is not delivered, so refresh until one is.
	before := a.Stats().Events
	var res RefreshResult
	var last time.Time
	eventually(t, "events to flow on the new subscription", func() bool {
		if a.Stats().Events > before {
			return true
		}
		if time.Since(last) > 250*time.Millisecond {
			last = time.Now()
			var err error
			if res, err = b.Refresh(ctx, 0, true); err != nil {
				t.Fatal(err)
			}
		}
		return false
	})
	eventually(t, "the cache to serve the newest token", func() bool {
		tok, err := a.Token(ctx)
		return err == nil && tok.AccessToken == res.Token.AccessToken
	})
}

// With the periodic probe out of the way (an hour), a half-open
// subscription is still found: at its refresh-ahead moment the replica
// finds under the lock a token it heard nothing about, probes at once, and
// subscribes again when the probe does not come back.
func TestMissedEventProbesTheSubscription(t *testing.T) {
	f := newFakeFetcher(3 * time.Second)
	noProbe := []Option{WithTuning(Tuning{ProbeInterval: time.Hour, ProbeTimeout: 300 * time.Millisecond})}
	a, b, first := halfOpen(t, f, noProbe, noProbe)
	ctx := ctxT(t)
	// b refreshes; a hears nothing of it.
	if _, err := b.Refresh(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	if got := a.Stats().Resubscribes; got != 0 {
		t.Fatalf("%d re-subscriptions before the replica had a reason to doubt", got)
	}
	// a's callers keep asking; at its moment (1.5 s into its token) it
	// takes the lock, finds b's token and doubts its subscription.
	eventually(t, "the missed event to get the subscription replaced", func() bool {
		if _, err := a.Token(ctx); err != nil {
			t.Fatal(err)
		}
		return a.Stats().Resubscribes > 0
	})
	if tok, err := a.Token(ctx); err != nil || tok.AccessToken == first.AccessToken {
		t.Errorf("after the missed event: %v, %v; want b's token or a newer one", tok, err)
	}
	eventsFlow(t, a, b)
}

// Redis restarted on the same port: memory keeps serving, and the cache
// recovers (subscription included) without a restart of its own.
func TestRedisRestartRecovers(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	f := newFakeFetcher(time.Hour)
	a := newCache(t, rdb, f, fastOpts()...)
	b := newCache(t, srv.Client(t), f, fastOpts()...)
	ctx := ctxT(t)
	first, err := a.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srv.Restart() // empty: the token is gone from Redis
	// No caller error: memory serves until the replica's re-check finds the
	// key gone (a restart looks like an operator's DEL), after which one
	// refresh replaces it.
	for range 100 {
		tok, err := a.Token(ctx)
		if err != nil || !tok.Valid(time.Now()) {
			t.Fatalf("while redis restarts: %v, %v; want a valid token", tok, err)
		}
	}
	_ = first
	// The replica notices the empty Redis on its next re-check, and new
	// events reach it.
	res, err := b.Refresh(ctx, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica a to follow the new token", func() bool {
		tok, err := a.Token(context.Background())
		return err == nil && tok.AccessToken == res.Token.AccessToken
	})
}

// Replicas whose clocks are two minutes fast or slow never serve an
// expired token: freshness comes from the key's PTTL on Redis's clock.
func TestClockSkewNeverServesExpired(t *testing.T) {
	rdb, mr := miniBackend(t)
	clock := newFakeClock()
	fast, slow := clock.Offset(2*time.Minute), clock.Offset(-2*time.Minute)
	f := newFakeFetcher(10 * time.Minute) // the issuer's lifetime, on the writer's clock
	f.now = fast.Now
	writer := newCache(t, rdb, f, fastOpts(withClock(fast), WithTuning(Tuning{RefreshJitter: -1}))...)
	reader := newCache(t, rdb, f, fastOpts(withClock(slow), WithTuning(Tuning{RefreshJitter: -1}))...)
	ctx := ctxT(t)
	tok, err := writer.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := reader.Token(ctx); err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("slow-clock reader: %v, %v; want the shared token", got, err)
	}
	// Stop refreshes so the old token would be served as long as allowed.
	f.failNext(errorsN(100, &issuerErr{code: "internal-server-error", retryable: true})...)
	ttl := 10*time.Minute - defaultExpirySkew
	step := func(d time.Duration) { clock.Advance(d); mr.FastForward(d) }
	step(ttl - time.Second)
	for _, c := range []*Cache{writer, reader} {
		if got, err := c.Token(ctx); err != nil || got.AccessToken != tok.AccessToken {
			t.Fatalf("before the TTL ends: %v, %v; want the token", got, err)
		}
	}
	step(2 * time.Second)
	for name, c := range map[string]*Cache{"fast": writer, "slow": reader} {
		if got, err := c.Token(ctx); err == nil && got.AccessToken == tok.AccessToken {
			t.Errorf("%s-clock replica served the token after its TTL ended", name)
		}
	}
}

// After SCRIPT FLUSH the scripts are reloaded transparently.
func TestScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	f := newFakeFetcher(time.Hour)
	c := newCache(t, rdb, f, fastOpts(withL1(false))...)
	ctx := ctxT(t)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(ctx); err != nil {
		t.Fatalf("after SCRIPT FLUSH: %v", err)
	}
	if _, err := c.Refresh(ctx, 0, true); err != nil {
		t.Fatalf("refresh after SCRIPT FLUSH: %v", err)
	}
	if got := f.calls.Load(); got != 2 {
		t.Errorf("issuer calls = %d, want 2", got)
	}
}

// A replica restarted while Redis is warm is served from Redis.
func TestWarmRestartMakesNoIssuerCall(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		f := newFakeFetcher(time.Hour)
		ctx := ctxT(t)
		first := newCache(t, rdb, f, fastOpts()...)
		tok, err := first.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = first.Close()
		restarted := newCache(t, rdb, f, fastOpts()...)
		got, err := restarted.Token(ctx)
		if err != nil || got.AccessToken != tok.AccessToken {
			t.Fatalf("restarted replica: %v, %v; want the cached token", got, err)
		}
		if n := f.calls.Load(); n != 1 {
			t.Errorf("issuer calls = %d, want 1", n)
		}
	})
}

// The token or lock key evicted under memory pressure: one refresh, no herd.
func TestEvictedKeysCostOneRefresh(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	f := newFakeFetcher(time.Hour)
	f.setDelay(50 * time.Millisecond)
	var caches []*Cache
	for range 5 {
		caches = append(caches, newCache(t, rdb, f, fastOpts()...))
	}
	ctx := ctxT(t)
	for _, c := range caches {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Evicted: no event. Replicas drop their copies when they re-check.
	rdb.Del(ctx, "tokencache:{default}:server", "tokencache:{default}:server:fence")
	for _, c := range caches {
		c.server.mem.expireSoft()
		_, _ = c.Token(ctx) // starts the background re-check
	}
	for _, c := range caches {
		eventually(t, "the replica to notice the eviction", func() bool { return c.server.mem.l1.Load() == nil })
	}
	done := make(chan error, len(caches)*10)
	for _, c := range caches {
		for range 10 {
			go func() { _, err := c.Token(ctx); done <- err }()
		}
	}
	for range len(caches) * 10 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := f.calls.Load(); got != 2 {
		t.Errorf("issuer calls = %d, want 2 (one refresh after the eviction)", got)
	}
}

// However many replicas loop through refreshes, issuer calls stay under
// the fleet-wide budget, and the still-valid token keeps being served.
func TestIssuerBudgetIsFleetWide(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		f := newFakeFetcher(time.Hour)
		opts := fastOpts(WithIssuerBudget(3, time.Minute), WithTuning(Tuning{RetryAttempts: 1, RetryBase: time.Millisecond, RetryMax: time.Millisecond}))
		a := newCache(t, rdb, f, opts...)
		b := newCache(t, rdb, f, opts...)
		ctx := ctxT(t)
		var last Token
		var exhausted int
		for i := range 6 {
			c := []*Cache{a, b}[i%2]
			res, err := c.Refresh(ctx, 0, true)
			switch {
			case err == nil:
				last = res.Token
			case errors.Is(err, ErrBudgetExhausted) && isFetchError(err, "issuer-budget-exhausted", false):
				exhausted++
			default:
				t.Fatalf("refresh %d: %v", i, err)
			}
		}
		if got := f.calls.Load(); got != 3 {
			t.Errorf("issuer calls = %d, want 3 (the budget)", got)
		}
		if exhausted != 3 {
			t.Errorf("refreshes refused = %d, want 3", exhausted)
		}
		if left := a.Stats().BudgetLeft + b.Stats().BudgetLeft; left != 0 {
			t.Errorf("budget left = %d, want 0", left)
		}
		if tok, err := a.Token(ctx); err != nil || tok.AccessToken != last.AccessToken {
			t.Errorf("with the budget spent: %v, %v; want the valid token", tok, err)
		}
	})
}

func TestIssuerBudgetWithoutRedis(t *testing.T) {
	rdb, mr := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	c := newCache(t, rdb, f, fastOpts(WithIssuerBudget(2, time.Hour), WithTuning(Tuning{RetryAttempts: 1, RetryBase: time.Millisecond, RetryMax: time.Millisecond}))...)
	mr.Close()
	ctx := ctxT(t)
	tok, err := c.Token(ctx)
	if err != nil {
		t.Fatalf("fail-open fetch: %v", err)
	}
	c.server.mem.l1.Store(nil) // as if the token had been rejected
	c.server.mem.setPending(nil)
	if _, err := c.Token(ctx); !errors.Is(err, ErrBudgetExhausted) {
		t.Errorf("second fail-open fetch in the window: got %v, want ErrBudgetExhausted", err)
	}
	if got := f.calls.Load(); got != 1 {
		t.Errorf("issuer calls = %d, want 1", got)
	}
	_ = tok
}

// The refresh lock on three independent masters (Redlock): one issuer call
// for the fleet, with one lock master down.
func TestRedlockOption(t *testing.T) {
	primary := redistest.Start(t)
	l1, l2 := redistest.Start(t), redistest.Start(t)
	client := func(s *redistest.Server) redis.UniversalClient {
		c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	if _, err := New(client(primary), newFakeFetcher(time.Hour), WithRedlock(client(l1))); err == nil {
		t.Error("an even number of Redlock masters was accepted")
	}
	l2.Stop()
	f := newFakeFetcher(time.Hour)
	f.setDelay(50 * time.Millisecond)
	var caches []*Cache
	for range 4 {
		caches = append(caches, newCache(t, client(primary), f, fastOpts(WithRedlock(client(l1), client(l2)))...))
	}
	ctx := ctxT(t)
	done := make(chan error, 40)
	for _, c := range caches {
		for range 10 {
			go func() { _, err := c.Token(ctx); done <- err }()
		}
	}
	for range 40 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := f.calls.Load(); got != 1 {
		t.Errorf("issuer calls = %d, want 1", got)
	}
}

// An issuer that fails fast and says nothing of when to come back: callers
// that keep asking get typed errors, and the fleet's calls back off across
// refreshes instead of becoming a stream.
func TestRetryableFailuresBackOffAcrossRefreshes(t *testing.T) {
	rdb, _ := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	f.failNext(errorsN(100000, &issuerErr{code: "service-unavailable", retryable: true})...)
	const attempts = 3
	var caches []*Cache
	for range 5 {
		caches = append(caches, newCache(t, rdb, f, fastOpts(WithTuning(Tuning{RetryAttempts: attempts, RetryBase: 5 * time.Millisecond, RetryMax: 5 * time.Millisecond}))...))
	}
	ctx := ctxT(t)
	start := time.Now()
	var errs atomic.Int64
	var wg sync.WaitGroup
	for _, c := range caches {
		for range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Since(start) < 2*time.Second {
					if _, err := c.Token(ctx); err == nil {
						t.Error("got a token from a failing issuer")
						return
					} else if !isFetchError(err, "service-unavailable", false) && !isFetchError(err, "service-unavailable", true) {
						t.Errorf("got %v, want a FetchError", err)
						return
					}
					errs.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	// Windows double from 10ms: at most log2(elapsed/5ms)+2 refreshes in
	// a row, each of `attempts` calls (plus one refresh per replica that
	// raced the first failure).
	elapsed := time.Since(start)
	refreshes := int64(math.Log2(float64(elapsed/(5*time.Millisecond)))) + 2 + int64(len(caches))
	if got := f.calls.Load(); got > refreshes*attempts {
		t.Errorf("issuer calls = %d in %v while failing, want at most %d", got, elapsed, refreshes*attempts)
	}
	t.Logf("%d issuer calls and %d caller errors in %v", f.calls.Load(), errs.Load(), elapsed)
}

// Real memory pressure: with maxmemory and allkeys-lru, Redis evicts the
// token (and perhaps the lock and fence) to make room; the fleet makes one
// refresh, no herd.
func TestMaxmemoryEviction(t *testing.T) {
	srv := redistest.Start(t, "--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru", "--maxmemory-samples", "10")
	rdb := srv.Client(t)
	f := newFakeFetcher(time.Hour)
	var caches []*Cache
	for range 4 {
		caches = append(caches, newCache(t, rdb, f, fastOpts()...))
	}
	ctx := ctxT(t)
	for _, c := range caches {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Fill Redis with colder data until the token is evicted.
	junk := strings.Repeat("x", 4096)
	for i := 0; rdb.Exists(ctx, "tokencache:{default}:server").Val() == 1; i++ {
		if i > 20000 {
			t.Fatal("the token was never evicted")
		}
		if err := rdb.Set(ctx, "junk:"+strconv.Itoa(i), junk, 0).Err(); err != nil {
			t.Fatalf("filling redis: %v", err)
		}
	}
	for _, c := range caches {
		c.server.mem.expireSoft()
		_, _ = c.Token(ctx) // the background re-check finds the token gone
	}
	for _, c := range caches {
		eventually(t, "the replica to notice the eviction", func() bool { return c.server.mem.l1.Load() == nil })
	}
	done := make(chan error, len(caches)*10)
	for _, c := range caches {
		for range 10 {
			go func() { _, err := c.Token(ctx); done <- err }()
		}
	}
	for range len(caches) * 10 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := f.calls.Load(); got != 2 {
		t.Errorf("issuer calls = %d, want 2 (one refresh after the eviction)", got)
	}
}

// holdReads makes the store hold every read between its reply and its
// return until the test releases it: each held read hands the test its
// release channel on the returned channel, in the order the replies came.
func holdReads(t *testing.T, c *Cache) <-chan chan struct{} {
	t.Helper()
	held := make(chan chan struct{}, 16)
	hook := func() {
		release := make(chan struct{})
		held <- release
		<-release
	}
	c.st.replied.Store(&hook)
	t.Cleanup(func() { c.st.replied.Store(nil) })
	return held
}

// A read that started before Redis answered "absent" (the key evicted or
// deleted without an event) cannot bring the deleted token back, in either
// order: its install after the re-check's drop is refused, and its install
// between the re-check's start and its answer is dropped by that answer.
// The reads are held at the store's seam, never by a sleep.
func TestAReadThatStartedBeforeAnAbsentAnswerCannotBringTheTokenBack(t *testing.T) {
	for _, order := range []string{"install after the drop", "install before the drop"} {
		t.Run(order, func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := srv.Client(t)
			f := newFakeFetcher(time.Hour)
			c := newCache(t, rdb, f, fastOpts()...)
			e := c.server
			ctx := ctxT(t)
			if _, err := c.Token(ctx); err != nil {
				t.Fatal(err)
			}
			held := holdReads(t, c)
			// A read that is not the worker's: a caller's flight, a
			// cron Refresh, or a re-read on another goroutine.
			direct := make(chan struct{})
			go func() {
				defer close(direct)
				_, _, _ = e.readAndInstall(ctx)
			}()
			directRead := <-held
			// Evicted: no event.
			rdb.Del(ctx, e.k.Token, e.k.Fence)
			e.mem.expireSoft()
			_, _ = c.Token(ctx) // asks the worker for the re-check
			recheckRead := <-held
			if order == "install after the drop" {
				close(recheckRead)
				eventually(t, "the re-check to drop the copy", func() bool { return e.mem.l1.Load() == nil })
				close(directRead)
				<-direct
			} else {
				close(directRead)
				<-direct
				close(recheckRead)
				eventually(t, "the re-check to finish", e.sched.work.idle)
			}
			if s := e.mem.l1.Load(); s != nil {
				t.Fatalf("the deleted token (generation %d) is served again", s.gen)
			}
			c.st.replied.Store(nil)
			if _, err := c.Token(ctx); err != nil {
				t.Fatal(err)
			}
			if got := f.calls.Load(); got != 2 {
				t.Errorf("issuer calls = %d, want 2: the eviction costs one refresh", got)
			}
		})
	}
}

// A re-subscription asks every copy for a re-check: what was published
// while the replica was not subscribed is lost. The re-check reads Redis
// first, even for a copy put off past its refresh-ahead moment while
// another replica holds the lock: a deletion missed meanwhile is learned
// now, not once the lock frees.
func TestAReCheckAfterResubscribingReadsRedisFirstForACopyPutOffPastItsMoment(t *testing.T) {
	rdb, mr := miniBackend(t)
	clock := newFakeClock()
	f := newFakeFetcher(time.Hour)
	f.now = clock.Now
	c := newCache(t, rdb, f, fastOpts(withClock(clock))...)
	ctx := ctxT(t)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	e := c.server
	e.sched.used.Store(false) // no caller since: the timer starts nothing
	step := time.Duration(e.mem.l1.Load().dueAt-c.monoNow()) + time.Second
	clock.Advance(step)
	mr.FastForward(step)
	// An attempt found the lock taken: the copy is put off past its
	// refresh-ahead moment.
	e.mem.later(time.Minute)
	if s := e.mem.l1.Load(); s.why != reasonLater || s.next <= s.dueAt {
		t.Fatalf("copy not put off past its moment: next %v (%v), due %v", time.Duration(s.next), s.why, time.Duration(s.dueAt))
	}
	// Missed while unsubscribed: the token was deleted, and another
	// replica holds the lock.
	mr.Del(e.k.Token)
	if err := mr.Set(e.k.Lock, "another-owner"); err != nil {
		t.Fatal(err)
	}
	mr.SetTTL(e.k.Lock, time.Minute)
	e.mem.expireSoft() // what onSubscribed does
	e.sched.background(ctx)
	if s := e.mem.l1.Load(); s != nil {
		t.Fatalf("the re-check kept serving a deleted token (next %v, %v)", time.Duration(s.next), s.why)
	}
}
