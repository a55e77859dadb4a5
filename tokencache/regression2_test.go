package tokencache

// Regression tests for the second review (one per finding); each failed
// before its fix.

import (
	"context"
	"crypto/rand"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// R1: a failure recorded by a replica with another credential blocks a
// replica whose credential works.
func TestRegression2FailureKeyIgnoresCredential(t *testing.T) {
	rdb, _ := miniBackend(t)
	old := newFakeFetcher(time.Hour)
	old.id = "revoked-key"
	old.failNext(&issuerErr{code: "access-denied"})
	good := newFakeFetcher(time.Hour)
	good.id = "new-key"
	a := newCache(t, rdb, old, fastOpts(WithNegativeTTL(10*time.Second))...)
	b := newCache(t, rdb, good, fastOpts(WithNegativeTTL(10*time.Second))...)
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

// R2: refresh-ahead ignores the fleet's negative memory: every replica
// calls the issuer once per negative window after a permanent failure.
func TestRegression2RefreshAheadHammers(t *testing.T) {
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
		cs = append(cs, newCache(t, rdb, f, fastOpts(WithNegativeTTL(time.Second), WithRefreshJitter(0))...))
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
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("failed issuer calls in ~2.5s of refresh-ahead with a 1s negative window: %d (fleet of %d)", failedCalls.Load(), n)
	if failedCalls.Load() > 4 {
		t.Errorf("refresh-ahead made %d failing issuer calls; the fleet-wide negative window should allow ~3", failedCalls.Load())
	}
}

// R3: a failure key written during a failed refresh-ahead (token still
// valid) survives; after a 401 invalidation the fleet cannot refetch.
func TestRegression2InvalidateBlockedByStaleFailure(t *testing.T) {
	rdb, mr := miniBackend(t)
	var fail atomic.Bool
	f := FetcherFunc(func(ctx context.Context) (Token, error) {
		if fail.Load() {
			return Token{}, &issuerErr{code: "unavailable", retryable: true, after: 30 * time.Second}
		}
		return Token{AccessToken: "tok-" + time.Now().String(), Expiry: time.Now().Add(time.Hour)}, nil
	})
	c := newCache(t, rdb, f, fastOpts(WithRetry(1, time.Millisecond, time.Millisecond))...)
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

// A token sealed with a key this replica lacks carries a credential
// fingerprint keyed under that key: the replica cannot tell whether it is
// its own credential's (and it lacks the key) or another deployment's, so
// it reports a KeyError naming the key id and does not overwrite it. (An
// unkeyed fingerprint that would tell would also let anyone who can read
// it test guesses of the credential offline.)
func TestRegression2ForeignCredentialEncrypted(t *testing.T) {
	rdb, _ := miniBackend(t)
	k1, k2 := make([]byte, 32), make([]byte, 32)
	rand.Read(k1)
	rand.Read(k2)
	r1, _ := NewKeyRing("a", map[string][]byte{"a": k1})
	r2, _ := NewKeyRing("b", map[string][]byte{"b": k2})
	f1 := newFakeFetcher(time.Hour)
	f1.id = "deployment-1"
	f2 := newFakeFetcher(time.Hour)
	f2.id = "deployment-2"
	c1 := newCache(t, rdb, f1, fastOpts(WithEncryption(r1))...)
	c2 := newCache(t, rdb, f2, fastOpts(WithEncryption(r2))...)
	ctx := ctxT(t)
	if _, err := c1.Token(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := c2.Token(ctx)
	var ke *KeyError
	if !errors.As(err, &ke) || ke.KeyID != "a" || f2.calls.Load() != 0 {
		t.Errorf("deployment-2 over a value sealed with a key it lacks: %v, issuer calls %d; want a KeyError naming key id a, no issuer call", err, f2.calls.Load())
	}
}

// R2b: the same with a retryable issuer error (5xx): every replica retries
// on its own, maxAttempts calls each time, and the budget drains.
func TestRegression2RefreshAheadRetryableDrainsBudget(t *testing.T) {
	rdb, _ := realBackend(t)
	const n = 6
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
		cs = append(cs, newCache(t, rdb, f, WithRefreshJitter(0), WithRetry(4, 20*time.Millisecond, 200*time.Millisecond), WithIssuerBudget(30, time.Minute)))
	}
	ctx := ctxT(t)
	for _, c := range cs {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fail.Store(true)
	stop := time.Now().Add(7500 * time.Millisecond)
	for time.Now().Before(stop) {
		for _, c := range cs {
			_, _ = c.Token(ctx)
		}
		time.Sleep(20 * time.Millisecond)
	}
	fail.Store(false)
	t.Logf("failing issuer calls during ~2.5s of refresh-ahead: %d; budget left %d", failedCalls.Load(), cs[0].Stats().BudgetLeft)
	time.Sleep(600 * time.Millisecond) // the token has expired now; the issuer is back
	_, err := cs[0].Token(ctx)
	t.Logf("Token after the issuer recovered: err=%v", err)
}

// R5: with Redis unreachable, the budget script is tried before the

// waiters elsewhere get an error although the issuer never failed.
func TestRegression2RefreshCallerCancelPoisonsFleet(t *testing.T) {
	rdb, mr := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	f.setDelay(700 * time.Millisecond)
	cron := newCache(t, rdb, f, fastOpts()...)
	other := newCache(t, rdb, f, fastOpts()...)
	cctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() { time.Sleep(50 * time.Millisecond); _, err := other.Token(ctxT(t)); errc <- err }()
	_, err := cron.Refresh(cctx, time.Minute, false)
	t.Logf("cron refresh: %v", err)
	t.Logf("failure key: exists=%v value=%s", mr.Exists("tokencache:{default}:server:failed"), func() string { s, _ := mr.Get("tokencache:{default}:server:failed"); return s }())
	werr := <-errc
	t.Logf("other replica's waiter: %v", werr)
	if werr != nil {
		t.Errorf("a caller's cancelled cron refresh failed another replica's Token: %v", werr)
	}
}
