package tokencache

// Failure memory: what one replica's failed refresh tells the fleet, and
// what it must not. A failure is shared so that the fleet does not hammer
// a failing issuer; it never blocks a working credential, never hides a
// valid token, and a caller's cancellation or a replica's shutdown is not
// a failure at all.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// Closing one replica while it refreshes (a SIGTERM during a rolling
// deploy) ends its issuer call with context.Canceled. That is not the
// issuer's answer: the fleet must not remember it as a permanent failure
// and serve it to every caller for the negative TTL.
func TestClosingAReplicaMidRefreshDoesNotFailTheFleet(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	fA := newFakeFetcher(time.Hour)
	fA.setGate(make(chan struct{})) // A's issuer call hangs
	a, _ := New(rdb, fA, fastOpts()...)
	fB := newFakeFetcher(time.Hour)
	b := newCache(t, rdb, fB, fastOpts()...)
	a.sub.waitSubscribed(ctx, time.Second)
	b.sub.waitSubscribed(ctx, time.Second)

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

// A "failed" event's retry time comes from another process (any client
// that can PUBLISH). Trusted without a bound it would keep a replica from
// even reading Redis, where a valid token is stored, for as long as the
// publisher liked.
func TestFailedEventCannotHideAValidTokenInRedis(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	a := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts()...)
	if _, err := a.Token(ctx); err != nil { // a valid token is now in Redis
		t.Fatal(err)
	}
	b := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts()...)
	b.sub.waitSubscribed(ctx, time.Second)
	ev, _ := json.Marshal(protocol.Event{Type: protocol.EventFailed, Key: "tokencache:{default}:server", Code: "access-denied",
		RetryInMS: (24 * time.Hour).Milliseconds(), Origin: "hostile-peer"}) // any PUBLISH
	rdb.Publish(ctx, "tokencache:{default}:events", ev)
	// Events are handled one at a time, in order: once an event for a key
	// b does not hold has arrived, the failed event has been handled.
	marker, _ := json.Marshal(protocol.Event{Type: protocol.EventRefreshed, Key: "tokencache:{default}:no-such-key", Origin: "marker"})
	rdb.Publish(ctx, "tokencache:{default}:events", marker)
	eventually(t, "both events", func() bool { return b.Stats().Events >= 2 })
	if _, err := b.Token(ctx); err != nil {
		t.Errorf("valid token in Redis, but Token failed: %v (redis reads=%d)", err, b.Stats().RedisReads)
	}
}

// A failure recorded by a replica with another credential (a revoked key
// beside its replacement, mid-rotation) does not block a replica whose
// credential works.
func TestAnotherCredentialsFailureDoesNotBlockThisOne(t *testing.T) {
	rdb, _ := miniBackend(t)
	old := newFakeFetcher(time.Hour)
	old.id = "revoked-key"
	old.failNext(&issuerErr{code: "access-denied"})
	good := newFakeFetcher(time.Hour)
	good.id = "new-key"
	a := newCache(t, rdb, old, fastOpts(WithTuning(Tuning{NegativeTTL: 10 * time.Second}))...)
	b := newCache(t, rdb, good, fastOpts(WithTuning(Tuning{NegativeTTL: 10 * time.Second}))...)
	ctx := ctxT(t)
	if _, err := a.Token(ctx); err == nil {
		t.Fatal("old credential should fail")
	}
	tok, err := b.Token(ctx)
	t.Logf("new-credential replica: tok=%v err=%v issuer calls=%d", tok, err, good.calls.Load())
	if err != nil {
		t.Fatalf("replica with a working credential blocked by another credential's failure: %v", err)
	}
}

// Refresh ahead honours the fleet's negative memory: after a permanent
// failure the fleet calls the issuer about once per negative window, not
// every replica once per window.
func TestRefreshAheadHonoursTheFleetsNegativeWindow(t *testing.T) {
	rdb, _ := realBackend(t)
	const n = 6
	var fail atomic.Bool
	var calls, failedCalls atomic.Int64
	f := FetcherFunc(func(ctx context.Context) (Token, error) {
		calls.Add(1)
		if fail.Load() {
			failedCalls.Add(1)
			return Token{}, &issuerErr{code: "access-denied"}
		}
		return Token{AccessToken: "tok-" + time.Now().String(), Expiry: time.Now().Add(10 * time.Second)}, nil
	})
	var cs []*Cache
	for i := 0; i < n; i++ {
		cs = append(cs, newCache(t, rdb, f, fastOpts(WithTuning(Tuning{NegativeTTL: time.Second, RefreshJitter: -1}))...))
	}
	ctx := ctxT(t)
	for _, c := range cs {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fail.Store(true)
	// token life 10s, skew 2s -> valid 8s, due at 5s. Keep calling for 7.5s.
	stop := time.Now().Add(7500 * time.Millisecond)
	for time.Now().Before(stop) {
		for _, c := range cs {
			_, _ = c.Token(ctx)
		}
		time.Sleep(20 * time.Millisecond) // the callers' pace: the subject is a rate of calls
	}
	t.Logf("failed issuer calls in ~2.5s of refresh-ahead with a 1s negative window: %d (fleet of %d)", failedCalls.Load(), n)
	if failedCalls.Load() > 4 {
		t.Errorf("refresh-ahead made %d failing issuer calls; the fleet-wide negative window should allow ~3", failedCalls.Load())
	}
}

// Retryable failures of refresh ahead (5xx) share one fleet back-off as
// well: the fleet retries as one, instead of every replica spending its
// attempts on its own and draining the issuer budget, so that once the
// issuer is back the fleet gets a token.
func TestRetryableRefreshAheadFailuresShareTheFleetsBackOff(t *testing.T) {
	rdb, _ := realBackend(t)
	const n, attempts = 6, 4
	var fail atomic.Bool
	var failedCalls atomic.Int64
	f := FetcherFunc(func(ctx context.Context) (Token, error) {
		if fail.Load() {
			failedCalls.Add(1)
			return Token{}, &issuerErr{code: "internal-server-error", retryable: true}
		}
		return Token{AccessToken: "tok-" + time.Now().String(), Expiry: time.Now().Add(10 * time.Second)}, nil
	})
	var cs []*Cache
	for i := 0; i < n; i++ {
		cs = append(cs, newCache(t, rdb, f, WithTuning(Tuning{RefreshJitter: -1, RetryAttempts: attempts, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond}), WithIssuerBudget(30, time.Minute)))
	}
	ctx := ctxT(t)
	var first Token
	for _, c := range cs {
		tok, err := c.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		first = tok
	}
	fail.Store(true)
	// token life 10s, skew 2s -> valid 8s, due at 5s. Keep calling for 7.5s.
	stop := time.Now().Add(7500 * time.Millisecond)
	for time.Now().Before(stop) {
		for _, c := range cs {
			_, _ = c.Token(ctx)
		}
		time.Sleep(20 * time.Millisecond) // the callers' pace: the subject is a rate of calls
	}
	fail.Store(false)
	failed := failedCalls.Load()
	t.Logf("failing issuer calls during ~2.5s of refresh-ahead: %d; budget left %d", failed, cs[0].Stats().BudgetLeft)
	// The fleet's back-off after the k-th failed refresh in a row is at
	// least 3/4 of 200ms<<(k-1): 150, 300, 600, 1200ms, so about five
	// fleet refreshes of four attempts fit in the ~2.5s window (16-23
	// calls measured: a replica may start a refresh just before another's
	// failure lands). Without the shared back-off every replica spends
	// its four attempts at each of its refreshes: 24 a round, round after
	// round.
	if max := int64(2 * n * attempts); failed > max {
		t.Errorf("%d failing issuer calls in the window, want at most %d (one fleet-wide refresh per back-off)", failed, max)
	}
	for i, c := range cs {
		if left := c.Stats().BudgetLeft; left == 0 {
			t.Errorf("replica %d: the issuer budget (30 a minute) is spent", i)
		}
	}
	// The issuer is back: once the first token's time is up, the fleet
	// gets a new one (a spent budget would refuse it for the rest of the
	// minute).
	eventually(t, "a new token after the issuer recovered", func() bool {
		tok, err := cs[0].Token(ctx)
		return err == nil && tok.AccessToken != first.AccessToken
	})
}

// A failure key written by a failed forced refresh while the token was
// still valid does not outlive the token: once the API rejects the token
// and the transport invalidates it, the fleet refetches from the issuer,
// which is back.
func TestInvalidateAfterAFailedForcedRefreshRefetches(t *testing.T) {
	rdb, mr := miniBackend(t)
	var fail atomic.Bool
	f := FetcherFunc(func(ctx context.Context) (Token, error) {
		if fail.Load() {
			return Token{}, &issuerErr{code: "unavailable", retryable: true, after: 30 * time.Second}
		}
		return Token{AccessToken: "tok-" + time.Now().String(), Expiry: time.Now().Add(time.Hour)}, nil
	})
	c := newCache(t, rdb, f, fastOpts(WithTuning(Tuning{RetryAttempts: 1, RetryBase: time.Millisecond, RetryMax: time.Millisecond}))...)
	ctx := ctxT(t)
	tok, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A cron refresh --force while the issuer hiccups.
	fail.Store(true)
	_, err = c.Refresh(ctx, 0, true)
	t.Logf("forced refresh: %v", err)
	fail.Store(false) // the issuer is back
	t.Logf("failure key after failed forced refresh while token valid: exists=%v ttl=%v", mr.Exists("tokencache:{default}:server:failed"), mr.TTL("tokencache:{default}:server:failed"))
	// The API now rejects the token (revoked): the transport invalidates.
	if ok, err := c.Invalidate(ctx, tok); !ok || err != nil {
		t.Fatal(ok, err)
	}
	_, err = c.Token(ctx)
	if err != nil {
		t.Errorf("after invalidation with the issuer recovered, Token fails: %v", err)
	}
}

// A caller that cancels its own refresh (a cron job's deadline) while
// replicas elsewhere wait for that refresh does not hand them its
// cancellation as a failure: they get a token although the issuer never
// failed.
func TestCancelledRefreshOfOneCallerDoesNotFailOtherReplicas(t *testing.T) {
	rdb, mr := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	f.setDelay(700 * time.Millisecond)
	cron := newCache(t, rdb, f, fastOpts()...)
	other := newCache(t, rdb, f, fastOpts()...)
	cctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cronErr := make(chan error, 1)
	go func() { _, err := cron.Refresh(cctx, time.Minute, false); cronErr <- err }()
	eventually(t, "the cron refresh to call the issuer", func() bool { return f.calls.Load() == 1 })
	errc := make(chan error, 1)
	go func() { _, err := other.Token(ctxT(t)); errc <- err }()
	eventually(t, "the other replica to wait for the refresh", func() bool { return other.Stats().Waits > 0 })
	cancel() // the cron job's deadline
	t.Logf("cron refresh: %v", <-cronErr)
	t.Logf("failure key: exists=%v value=%s", mr.Exists("tokencache:{default}:server:failed"), func() string { s, _ := mr.Get("tokencache:{default}:server:failed"); return s }())
	werr := <-errc
	t.Logf("other replica's waiter: %v", werr)
	if werr != nil {
		t.Errorf("a caller's cancelled cron refresh failed another replica's Token: %v", werr)
	}
}

// The failure memory on its own: no Redis, no Cache, a clock moved by hand.

func newTestFailures(now *time.Time, held int64) *failures {
	epoch := *now
	m := &memory{keep: true, now: func() mono { return mono(now.Sub(epoch)) }, moved: func() {}}
	m.l1.Store(&snapshot{gen: held, validUntil: mono(time.Hour)})
	return &failures{m: m, sig: newSignal(), now: func() time.Time { return *now },
		negativeTTL: 10 * time.Minute, backoffMax: 2 * time.Second}
}

// clearBelow is what installing a copy of generation gen does to the
// failure memory.
func (f *failures) clearBelow(gen int64) {
	f.m.mu.Lock()
	f.m.clearBelowLocked(gen)
	f.m.mu.Unlock()
}

func TestFailuresWindowDoublesWithEachRetryableFailureInARow(t *testing.T) {
	now := time.Unix(1000, 0)
	f := newTestFailures(&now, 1)
	retryable := &FetchError{Retryable: true}
	// Jittered by ±25% around 2s, 4s, 8s, 16s, then capped at 30s.
	for i, want := range []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, maxRetryWindow, maxRetryWindow} {
		got, n := f.window(retryable, errors.New("503"))
		if lo, hi := min(want*3/4, maxRetryWindow), min(want*5/4, maxRetryWindow); got < lo || got > hi {
			t.Fatalf("failure %d in a row: window %v, want %v±25%% (at most %v)", i+1, got, want, maxRetryWindow)
		}
		if n != int32(i+1) || f.streak() != n {
			t.Fatalf("failure %d in a row: streak %d (%d remembered)", i+1, n, f.streak())
		}
	}
	if got, _ := f.window(&FetchError{}, errors.New("401")); got != 10*time.Minute {
		t.Fatalf("permanent failure: window %v, want the negative TTL", got)
	}
}

func TestFailuresNewerTokenEndsTheWindow(t *testing.T) {
	now := time.Unix(1000, 0)
	f := newTestFailures(&now, 4)
	_, seq := f.sig.arm()
	fe := &FetchError{Code: "x", Retryable: true, Until: now.Add(time.Minute)}
	f.m.back = failStreak{n: 3}
	f.record(fe)
	if f.since(seq) != fe || f.negative() != fe || f.backingOff() != time.Minute {
		t.Fatal("a recorded failure is not remembered, or its waiters not told")
	}
	f.clearBelow(4) // the token whose refresh failed, read again
	if f.negative() != fe || f.streak() != 3 {
		t.Fatal("re-reading the token whose refresh failed ended the window")
	}
	f.clearBelow(5)
	if f.negative() != nil || f.streak() != 0 {
		t.Fatal("a newer token did not end the window and the streak")
	}
}

func TestFailuresAdoptKeepsTheLocalCauseButTheFleetsStreak(t *testing.T) {
	now := time.Unix(1000, 0)
	f := newTestFailures(&now, 1)
	local := &FetchError{Code: "local", Until: now.Add(time.Minute)}
	f.record(local)
	f.adopt(&FetchError{Code: "remote", Until: now.Add(time.Minute)}, 5)
	if f.negative() != local || f.streak() != 5 {
		t.Fatalf("adopted %v with streak %d; want the local failure, the fleet's streak 5", f.negative(), f.streak())
	}
	f.adopt(&FetchError{}, 2)
	if f.streak() != 5 {
		t.Fatal("a shorter streak from the fleet lowered ours")
	}
	now = now.Add(time.Minute) // the local window has ended
	remote := &FetchError{Code: "remote", Until: now.Add(time.Minute)}
	f.adopt(remote, 0)
	if f.negative() != remote {
		t.Fatal("the fleet's failure not adopted once ours ended")
	}
	if f.limit(true) != maxRetryWindow || f.limit(false) != 10*time.Minute {
		t.Fatal("the fleet may impose a longer window than ours")
	}
}

// The API's rejections and the issuer's failures share one window
// machine: a stored token ends a streak of failed refreshes, not one of
// rejected tokens (which only the API's acceptance ends), and a failure of
// the other kind starts the count again.
func TestOneWindowMachineForRefreshFailuresAndRejections(t *testing.T) {
	m := newTestMemory(true)
	now := time.Unix(1000, 0)
	f := &failures{m: &m.memory, sig: newSignal(), now: func() time.Time { return now }, negativeTTL: time.Minute, backoffMax: 2 * time.Second}
	m.install(copyOf("a", 1, 1))
	for i := range 3 {
		b := Token{AccessToken: fmt.Sprint("fresh-", i)}
		m.invalidating("", 0)
		// Each fresh token is stored (a newer generation) before the API
		// rejects it: storing it must not end the rejections' streak.
		m.install(copyOf(b.AccessToken, int64(i+2), 1))
		if n, _, grew := m.rejectedFresh(b); n != int32(i+1) || !grew {
			t.Fatalf("rejection %d: streak %d (grew %v)", i+1, n, grew)
		}
	}
	if got := f.streak(); got != 0 {
		t.Fatalf("the refreshes' streak reads %d while the API's runs", got)
	}
	// An issuer failure now: the refreshes' count starts at one.
	if _, n := f.window(&FetchError{Retryable: true}, errors.New("503")); n != 1 {
		t.Fatalf("an issuer failure during the API's streak: count %d, want 1", n)
	}
	m.mu.Lock()
	if hold := m.holdUntil(); hold != 0 {
		t.Errorf("401s still held (until %v) once the streak counts the issuer's failures", hold)
	}
	m.mu.Unlock()
	f.record(&FetchError{Retryable: true, Until: now.Add(time.Minute)})
	m.install(copyOf("new", 9, 1))
	if f.negative() != nil || f.streak() != 0 {
		t.Fatalf("a newer token stored kept the failure (%v) or the refreshes' streak (%d)", f.negative(), f.streak())
	}
}
