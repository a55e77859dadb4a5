package tokencache

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
)

// A caller that reports every token it gets as rejected, at once, in a
// loop, costs the fleet one issuer call per rejection window, as Transport
// does for an API that rejects every token.
func TestReportingEveryTokenRejectedCostsOneIssuerCallPerWindow(t *testing.T) {
	for _, l1 := range []bool{true, false} {
		t.Run(map[bool]string{true: "l1", false: "without l1"}[l1], func(t *testing.T) {
			s := redistest.Start(t)
			ctx := ctxT(t)
			clock := newFakeClock()
			f := &sameTokenFetcher{exp: clock.Now().Add(2 * time.Hour), fresh: true}
			c := newCache(t, s.Client(t), f, fastOpts(withClock(clock), withL1(l1))...)
			var held, invalidated int
			for i := 0; i < 300; i++ { // 300 virtual seconds, one report a second
				clock.Advance(time.Second)
				tok, err := c.Token(ctx)
				if err != nil {
					t.Fatal(err)
				}
				r, err := c.Rejected(ctx, tok.Fingerprint())
				if err != nil {
					t.Fatal(err)
				}
				if r.Held {
					held++
				}
				if r.Invalidated {
					invalidated++
				}
			}
			t.Logf("issuer calls: %d, held %d, invalidated %d", f.calls.Load(), held, invalidated)
			if n := f.calls.Load(); n > 8 {
				t.Errorf("issuer calls = %d for 300 reports, want the window to double (10,20,40,80,160 s: about 6)", n)
			}
			if held < 280 || invalidated < 2 {
				t.Errorf("held %d, invalidated %d: want most held and a few invalidations", held, invalidated)
			}
		})
	}
}

// The same loop against a user's token, with many goroutines reporting the
// same token at once: one invalidation per token.
func TestConcurrentReportsOfOneTokenShareOneInvalidation(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	f := newFakeFetcher(time.Hour)
	a := newCache(t, s.Client(t), f, fastOpts()...)
	b := newCache(t, s.Client(t), f, fastOpts()...)
	tok, err := a.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Token(ctx); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	deleted := 0
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := a
			if i%2 == 1 {
				c = b
			}
			r, err := c.Rejected(ctx, tok.Fingerprint())
			if err != nil {
				t.Error(err)
				return
			}
			if r.Invalidated {
				mu.Lock()
				deleted++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n := f.calls.Load(); n != 2 {
		t.Errorf("issuer calls = %d, want 2 (the token, its one replacement)", n)
	}
	// Every report on one replica that joined its deletion says so; the
	// other replica's found the token gone.
	if deleted == 0 || deleted > 20 {
		t.Errorf("reports answered invalidated: %d, want those of one replica", deleted)
	}
	// A late report of the replaced token does nothing.
	r, err := a.Rejected(ctx, tok.Fingerprint())
	if err != nil || !r.Stale || r.Invalidated {
		t.Errorf("late report: %+v %v, want stale", r, err)
	}
	if n := f.calls.Load(); n != 2 {
		t.Errorf("issuer calls = %d after a late report, want 2", n)
	}
}

// A token reported rejected long after it was fetched was in use meanwhile:
// it is invalidated even during a rejection streak, and the streak ends.
func TestTokenReportedAfterLongUseIsInvalidated(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	clock := newFakeClock()
	f := &sameTokenFetcher{exp: clock.Now().Add(2 * time.Hour), fresh: true}
	c := newCache(t, s.Client(t), f, fastOpts(withClock(clock))...)
	report := func() RejectedResult {
		t.Helper()
		tok, err := c.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.Rejected(ctx, tok.Fingerprint())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := report(); !r.Invalidated {
		t.Fatalf("first report: %+v, want invalidated", r)
	}
	if r := report(); !r.Held || r.HeldFor <= 0 || r.HeldFor > 10*time.Second {
		t.Fatalf("the replacement reported at once: %+v, want held for up to 10s", r)
	}
	clock.Advance(30 * time.Minute) // past the window: the held token is the token's fault now
	if r := report(); !r.Invalidated {
		t.Fatalf("the held token, after the window: %+v, want invalidated", r)
	}
	clock.Advance(30 * time.Minute) // its replacement is used for half an hour
	if r := report(); !r.Invalidated {
		t.Fatalf("after half an hour of use: %+v, want invalidated", r)
	}
	if r := report(); !r.Held || r.HeldFor > 10*time.Second {
		t.Errorf("the next replacement, at once: %+v, want held for the first window again (the streak ended)", r)
	}
	if n := f.calls.Load(); n != 4 {
		t.Errorf("issuer calls = %d, want 4", n)
	}
}

// Users' client tokens spend the issuer budget only down to the share
// reserved for the server token: a client asking for a new user's token in
// a loop cannot starve the token every replica needs.
func TestUserChurnCannotStarveTheServerToken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		ctx := ctxT(t)
		uf := &userFetchers{}
		f := newFakeFetcher(time.Hour)
		c := newCache(t, rdb, f, fastOpts(WithClientTokens(uf.new, 0), WithIssuerBudget(20, time.Hour), WithTuning(Tuning{RetryAttempts: 1, RetryBase: time.Millisecond, RetryMax: time.Millisecond}))...)
		refused := 0
		for i := range 40 {
			if _, err := clientToken(c, ctx, fmt.Sprint("churn-", i)); errors.Is(err, ErrBudgetExhausted) {
				refused++
			} else if err != nil {
				t.Fatal(err)
			}
		}
		if n := uf.calls(); n != 18 || refused != 22 {
			t.Errorf("user token calls %d, refused %d: want 18 (20 less the server's reserve of 2) and 22", n, refused)
		}
		if _, err := c.Token(ctx); err != nil {
			t.Fatalf("the server token after the churn: %v", err)
		}
		if _, err := c.Refresh(ctx, 0, true); err != nil {
			t.Fatalf("a second server token call: %v", err)
		}
		if n := f.calls.Load(); n != 2 {
			t.Errorf("server token calls = %d, want 2 (the reserve)", n)
		}
		if _, err := c.Refresh(ctx, 0, true); !errors.Is(err, ErrBudgetExhausted) {
			t.Errorf("a third server token call: %v, want the budget spent", err)
		}
	})
}

// Judging a report never fetches a token: a report for a user with none
// cached is stale, at no issuer call.
func TestReportWithNothingCachedFetchesNothing(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	uf := &userFetchers{}
	c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithClientTokens(uf.new, 0))...)
	for i := range 20 {
		u, err := c.User(fmt.Sprint("nobody-", i))
		if err != nil {
			t.Fatal(err)
		}
		r, err := u.Rejected(ctx, "sha256:0123456789abcdef")
		if err != nil || !r.Stale || r.Invalidated || r.Held {
			t.Fatalf("report for user %d: %+v %v, want stale", i, r, err)
		}
		if u.Cached() {
			t.Errorf("user %d: cached after a report", i)
		}
	}
	if n := uf.calls(); n != 0 {
		t.Errorf("issuer calls = %d, want 0", n)
	}
	if _, err := c.Rejected(ctx, ""); err == nil {
		t.Error("an empty fingerprint: no error")
	}
}
