package faulttest

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testutil"
)

// Scenario 1: the lock holder is killed with SIGKILL while its issuer call
// is in flight. Its lease runs out (nobody extends it), a waiting replica
// takes the lock over and fetches: two issuer calls in all, one token for
// every waiter.
func TestHolderKilledMidFetch(t *testing.T) {
	srv := redistest.Start(t)
	is := newIssuer(t, time.Hour)
	cfg := baseConfig(srv.Addr, is.URL)
	ops := newCache(t, srv.Addr, cfg) // reads, never fetches
	_, _, _, channel := ops.Keys()
	holder := startReplica(t, "holder", cfg)
	waiters := []*replica{startReplica(t, "b", cfg), startReplica(t, "c", cfg)}
	waitSubscribers(t, srv.Client(t), channel, 4)

	release := is.holdNext() // the holder's call is never answered
	defer release()
	first := holder.get(30 * time.Second)
	testutil.Eventually(t, "the holder to call the issuer", func() bool { return is.calls.Load() == 1 })
	var gets []pending
	for _, w := range waiters {
		gets = append(gets, w.get(30*time.Second))
	}
	for _, w := range waiters {
		testutil.Eventually(t, "replica "+w.name+" to wait for the holder", func() bool { return w.stats().Waits > 0 })
	}

	killed := time.Now()
	holder.signal(syscall.SIGKILL)
	if res := first.wait(10 * time.Second); res.Received {
		t.Errorf("the killed holder answered: %v", res)
	}
	tokens := map[string]bool{}
	for i, g := range gets {
		res := g.wait(60 * time.Second)
		if !res.Received || res.Class != "" {
			t.Fatalf("replica %s: got %v, want a token", waiters[i].name, res)
		}
		tokens[res.Token] = true
		t.Logf("replica %s had the token %v after the SIGKILL (lock TTL %v)", waiters[i].name, res.At.Sub(killed).Round(time.Millisecond), cfg.LockTTL)
	}
	if len(tokens) != 1 {
		t.Errorf("waiters got %d distinct tokens, want 1", len(tokens))
	}
	if got := is.calls.Load(); got != 2 {
		t.Errorf("issuer calls = %d, want 2 (the killed holder's and one takeover)", got)
	}
	st, err := ops.Inspect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for tok := range tokens {
		if st.TokenFingerprint != fingerprint(tok) {
			t.Errorf("Redis holds token %s, want the takeover's %s", st.TokenFingerprint, fingerprint(tok))
		}
	}
	if st.Generation != 2 {
		t.Errorf("stored generation = %d, want 2 (the killed holder drew 1)", st.Generation)
	}
}

// Scenario 2: the lock holder is paused with SIGSTOP during its issuer
// call, past its lease. Another replica takes over and stores a newer
// token; then the issuer answers the paused holder and it is continued.
// Its late write carries an older fencing generation and is rejected:
// Redis keeps the newer token and generation, and the holder itself
// serves the fleet's newer token.
func TestPausedHolderIsFencedOut(t *testing.T) {
	srv := redistest.Start(t)
	is := newIssuer(t, time.Hour)
	cfg := baseConfig(srv.Addr, is.URL)
	cfg.LockTTL = time.Second
	ops := newCache(t, srv.Addr, cfg)
	_, _, _, channel := ops.Keys()
	holder := startReplica(t, "paused", cfg)
	other := startReplica(t, "other", cfg)
	waitSubscribers(t, srv.Client(t), channel, 3)
	ctx := ctxFor(t, time.Minute)

	release := is.holdNext()
	defer release()
	late := holder.get(time.Minute)
	testutil.Eventually(t, "the holder to call the issuer", func() bool { return is.calls.Load() == 1 })
	holder.signal(syscall.SIGSTOP)
	testutil.Eventually(t, "the paused holder's lease to run out", func() bool {
		st, err := ops.Inspect(ctx)
		return err == nil && !st.LockHeld
	})

	newer := other.get(30 * time.Second).wait(60 * time.Second)
	if !newer.Received || newer.Class != "" {
		t.Fatalf("the other replica: got %v, want a token", newer)
	}
	before, err := ops.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before.TokenFingerprint != fingerprint(newer.Token) || before.Generation != 2 {
		t.Fatalf("before the holder resumes: Redis holds %s generation %d, want %s generation 2",
			before.TokenFingerprint, before.Generation, fingerprint(newer.Token))
	}

	// The issuer answers the paused process (the kernel buffers it), then
	// the process resumes and tries to store its now-older token.
	release()
	testutil.Eventually(t, "the issuer to answer the paused holder", func() bool { return is.minted.Load() == 2 })
	holder.signal(syscall.SIGCONT)
	res := late.wait(60 * time.Second)
	if !res.Received || res.Class != "" {
		t.Fatalf("the resumed holder: got %v, want a token", res)
	}
	if res.Token != newer.Token {
		t.Errorf("the resumed holder served %s, want the fleet's newer token %s", fingerprint(res.Token), fingerprint(newer.Token))
	}
	if got := holder.stats().FencedWrites; got != 1 {
		t.Errorf("the resumed holder's fenced writes = %d, want 1 (its late write rejected)", got)
	}
	after, err := ops.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.TokenFingerprint != fingerprint(newer.Token) {
		t.Errorf("after the late write: Redis holds %s, want the newer %s", after.TokenFingerprint, fingerprint(newer.Token))
	}
	if after.Generation != 2 || after.Fence != 2 {
		t.Errorf("after the late write: generation %d, fence %d; want 2 and 2", after.Generation, after.Fence)
	}
	if got := is.calls.Load(); got != 2 {
		t.Errorf("issuer calls = %d, want 2", got)
	}
}
