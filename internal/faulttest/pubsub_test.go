package faulttest

import (
	"context"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testutil"
)

// Scenario 5: every pub/sub connection is killed (CLIENT KILL TYPE pubsub)
// while replicas wait for the lock holder, and the holder publishes its
// "refreshed" at once, while the subscriptions reconnect: that message may
// be lost. Waiters must still complete: the re-subscription makes them
// re-check Redis. Their polling interval is set far beyond their caller
// timeout, so a waiter that completes was woken by the event or the
// re-subscription, not by polling.
func TestPubSubKilledDuringWait(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	is := newIssuer(t, time.Hour)
	cfg := baseConfig(srv.Addr, is.URL)
	cfg.LockTTL = 3 * time.Second
	cfg.WaitRecheck = time.Minute // jittered: never below 45s
	const waitBound = 3 * 3 * time.Second
	ops := newCache(t, srv.Addr, cfg)
	_, _, _, channel := ops.Keys()
	holder := startReplica(t, "holder", cfg)
	var waiters []*replica
	for _, name := range []string{"w1", "w2", "w3"} {
		waiters = append(waiters, startReplica(t, name, cfg))
	}
	subscribers := int64(len(waiters) + 2)
	ctx := ctxFor(t, 2*time.Minute)

	const rounds = 3
	for round := 1; round <= rounds; round++ {
		waitSubscribers(t, rdb, channel, subscribers)
		release := is.holdNext()
		h := holder.get(30 * time.Second)
		testutil.Eventually(t, "the holder to call the issuer", func() bool { return is.calls.Load() == int64(round) })
		var gets []pending
		for _, w := range waiters {
			gets = append(gets, w.get(waitBound))
		}
		for _, w := range waiters {
			testutil.Eventually(t, "replica "+w.name+" to wait", func() bool { return w.stats().Waits >= uint64(round) })
		}
		killed, err := rdb.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
		if err != nil || killed < subscribers {
			t.Fatalf("CLIENT KILL TYPE pubsub: killed %d, %v; want %d", killed, err, subscribers)
		}
		release() // the holder stores and publishes while the subscriptions reconnect

		hr := h.wait(time.Minute)
		if !hr.Received || hr.Class != "" {
			t.Fatalf("round %d: holder got %v, want a token", round, hr)
		}
		answered := is.lastAnswer()
		for i, g := range gets {
			res := g.wait(time.Minute)
			if !res.Received || res.Class != "" {
				t.Fatalf("round %d: waiter %s got %v, want the holder's token", round, waiters[i].name, res)
			}
			if res.Token != hr.Token {
				t.Errorf("round %d: waiter %s got %s, want the holder's %s", round, waiters[i].name, fingerprint(res.Token), fingerprint(hr.Token))
			}
			t.Logf("round %d: waiter %s had the token %v after the issuer answered (lock TTL %v)",
				round, waiters[i].name, res.At.Sub(answered).Round(time.Millisecond), cfg.LockTTL)
		}
		if got := is.calls.Load(); got != int64(round) {
			t.Errorf("round %d: issuer calls = %d, want %d", round, got, round)
		}
		// Next round: every replica drops the token on the
		// "invalidated" event (the subscriptions are back).
		waitSubscribers(t, rdb, channel, subscribers)
		all := append([]*replica{holder}, waiters...)
		seen := make([]uint64, len(all))
		for i, r := range all {
			seen[i] = r.stats().Events
		}
		if ok, err := ops.InvalidateFingerprint(context.Background(), "", 0); err != nil || !ok {
			t.Fatalf("invalidate: %v, %v", ok, err)
		}
		for i, r := range all {
			testutil.Eventually(t, "replica "+r.name+" to hear the invalidation", func() bool { return r.stats().Events > seen[i] })
		}
	}
}
