package tokencache

import (
	"errors"
	"testing"
	"time"
)

// The failure memory on its own: no Redis, no Cache, a clock moved by hand.

func newTestFailures(now *time.Time, held *int64) *failures {
	return &failures{sig: newSignal(), now: func() time.Time { return *now }, held: func() int64 { return *held },
		negativeTTL: 10 * time.Minute, backoffMax: 2 * time.Second}
}

func TestFailuresWindowDoublesWithEachRetryableFailureInARow(t *testing.T) {
	now, held := time.Unix(1000, 0), int64(1)
	f := newTestFailures(&now, &held)
	retryable := &FetchError{Retryable: true}
	// Jittered by ±25% around 2s, 4s, 8s, 16s, then capped at 30s.
	for i, want := range []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, maxRetryWindow, maxRetryWindow} {
		got := f.window(retryable, errors.New("503"))
		if lo, hi := min(want*3/4, maxRetryWindow), min(want*5/4, maxRetryWindow); got < lo || got > hi {
			t.Fatalf("failure %d in a row: window %v, want %v±25%% (at most %v)", i+1, got, want, maxRetryWindow)
		}
	}
	if got := f.window(&FetchError{}, errors.New("401")); got != 10*time.Minute {
		t.Fatalf("permanent failure: window %v, want the negative TTL", got)
	}
}

func TestFailuresNewerTokenEndsTheWindow(t *testing.T) {
	now, held := time.Unix(1000, 0), int64(4)
	f := newTestFailures(&now, &held)
	_, seq := f.sig.arm()
	fe := &FetchError{Code: "x", Retryable: true, Until: now.Add(time.Minute)}
	f.streak.Store(3)
	f.record(fe)
	if f.since(seq) != fe || f.negative() != fe || f.backingOff() != time.Minute {
		t.Fatal("a recorded failure is not remembered, or its waiters not told")
	}
	f.clearBelow(4) // the token whose refresh failed, read again
	if f.negative() != fe || f.streak.Load() != 3 {
		t.Fatal("re-reading the token whose refresh failed ended the window")
	}
	f.clearBelow(5)
	if f.negative() != nil || f.streak.Load() != 0 {
		t.Fatal("a newer token did not end the window and the streak")
	}
}

func TestFailuresAdoptKeepsTheLocalCauseButTheFleetsStreak(t *testing.T) {
	now, held := time.Unix(1000, 0), int64(1)
	f := newTestFailures(&now, &held)
	local := &FetchError{Code: "local", Until: now.Add(time.Minute)}
	f.record(local)
	f.adopt(&FetchError{Code: "remote", Until: now.Add(time.Minute)}, 5)
	if f.negative() != local || f.streak.Load() != 5 {
		t.Fatalf("adopted %v with streak %d; want the local failure, the fleet's streak 5", f.negative(), f.streak.Load())
	}
	f.adopt(&FetchError{}, 2)
	if f.streak.Load() != 5 {
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
