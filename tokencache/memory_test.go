package tokencache

import (
	"math"
	"testing"
	"time"
)

// The in-memory copy on its own: no Redis, no Cache, a clock moved by hand.

// testMemory is a memory whose clock is *now and that counts the times it
// asked for the timer to be armed.
type testMemory struct {
	memory
	clock mono
	arms  int
}

func newTestMemory(keep bool) *testMemory {
	m := &testMemory{}
	m.memory = memory{keep: keep, now: func() mono { return m.clock }, moved: func() { m.arms++ }}
	return m
}

// copyOf is a copy of the token name at generation gen, stored at storedMS,
// valid until 100s with its refresh-ahead moment at 80s.
func copyOf(name string, gen, storedMS int64) *snapshot {
	tok := Token{AccessToken: name}
	return &snapshot{tok: tok, fp: tok.Fingerprint(), gen: gen, storedMS: storedMS,
		validUntil: mono(100 * time.Second), dueAt: mono(80 * time.Second), softUntil: mono(80 * time.Second)}
}

func TestMemoryInstallKeepsTheNewerTokenWhileItIsValid(t *testing.T) {
	for _, tc := range []struct {
		name          string
		held, offered *snapshot
	}{
		{"higher generation", copyOf("a", 2, 10), copyOf("b", 1, 20)},
		{"same generation, stored later", copyOf("a", 1, 20), copyOf("b", 1, 10)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMemory(true)
			if !m.install(tc.held) {
				t.Fatal("first install refused")
			}
			if m.install(tc.offered) {
				t.Fatalf("older token %q installed over %q", tc.offered.fp, tc.held.fp)
			}
			if got := m.l1.Load(); got != tc.held {
				t.Fatalf("serving %q, want %q", got.fp, tc.held.fp)
			}
			// Once the newer one has expired, the older one is better than none.
			m.clock = tc.held.validUntil
			if !m.install(tc.offered) || m.l1.Load() != tc.offered {
				t.Fatalf("older token not installed once the newer one expired")
			}
			if m.arms != 2 {
				t.Fatalf("armed %d times, want 2 (once per install)", m.arms)
			}
		})
	}
}

func TestMemoryInstallReplacesAnOlderToken(t *testing.T) {
	for _, tc := range []struct {
		name          string
		held, offered *snapshot
	}{
		{"higher generation", copyOf("a", 1, 20), copyOf("b", 2, 10)},
		{"same generation, stored later", copyOf("a", 1, 10), copyOf("b", 1, 20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMemory(true)
			m.install(tc.held)
			if !m.install(tc.offered) || m.l1.Load() != tc.offered {
				t.Fatalf("newer token %q not installed over %q", tc.offered.fp, tc.held.fp)
			}
		})
	}
}

func TestMemoryPutOffNeverMovesAMomentEarlier(t *testing.T) {
	m := newTestMemory(true)
	m.install(copyOf("a", 1, 1))
	m.clock = mono(10 * time.Second)
	m.later(30 * time.Second) // 40s: earlier than the moment (80s)
	if s := m.l1.Load(); s.softUntil != mono(80*time.Second) || s.dueAt != mono(80*time.Second) {
		t.Fatalf("moment moved to %v/%v, want 80s/80s", time.Duration(s.softUntil), time.Duration(s.dueAt))
	}
	m.later(80 * time.Second) // 90s: later
	s := m.l1.Load()
	if s.softUntil != mono(90*time.Second) || s.dueAt != mono(90*time.Second) {
		t.Fatalf("moment %v/%v, want 90s/90s", time.Duration(s.softUntil), time.Duration(s.dueAt))
	}
	m.later(time.Second) // 11s: earlier again
	if got := m.l1.Load(); got != s {
		t.Fatalf("moment moved from 90s to %v", time.Duration(got.softUntil))
	}
	if m.arms != 2 {
		t.Fatalf("armed %d times, want 2 (the install and the one put-off that moved)", m.arms)
	}
}

func TestMemoryPutOffNeverExtendsValidity(t *testing.T) {
	m := newTestMemory(true)
	m.install(copyOf("a", 1, 1))
	m.later(time.Hour)
	s := m.l1.Load()
	if s.validUntil != mono(100*time.Second) {
		t.Fatalf("validity moved to %v", time.Duration(s.validUntil))
	}
	if s.softUntil != s.validUntil || s.dueAt != s.validUntil {
		t.Fatalf("moment %v/%v beyond the validity %v", time.Duration(s.softUntil), time.Duration(s.dueAt), time.Duration(s.validUntil))
	}
}

func TestMemoryHoldsACopyOnceForAtMostHalfItsValidity(t *testing.T) {
	m := newTestMemory(true)
	m.install(copyOf("a", 5, 1))
	m.clock = mono(20 * time.Second)
	m.hold(6, time.Hour) // until 20s + 40s: earlier than the moment
	if s := m.l1.Load(); s.held || s.softUntil != mono(80*time.Second) {
		t.Fatalf("a hold that ends before the moment moved it to %v (held=%v)", time.Duration(s.softUntil), s.held)
	}
	m.clock = mono(70 * time.Second)
	m.hold(5, time.Hour) // not a newer generation
	if m.l1.Load().held {
		t.Fatal("held by a refresh of the generation held")
	}
	m.hold(6, time.Hour)
	s := m.l1.Load()
	if want := mono(85 * time.Second); !s.held || s.softUntil != want || s.dueAt != want {
		t.Fatalf("held=%v until %v/%v, want held until 85s (half of the 30s left)", s.held, time.Duration(s.softUntil), time.Duration(s.dueAt))
	}
	m.clock = mono(84 * time.Second)
	m.hold(7, time.Hour)
	if got := m.l1.Load(); got != s {
		t.Fatalf("held twice: until %v", time.Duration(got.softUntil))
	}
	// A short hold: the lock TTL bounds it.
	m2 := newTestMemory(true)
	m2.install(copyOf("a", 5, 1))
	m2.clock = mono(78 * time.Second)
	m2.hold(6, 5*time.Second)
	if got := m2.l1.Load().softUntil; got != mono(83*time.Second) {
		t.Fatalf("a 5s hold at 78s put the moment off to %v, want 83s", time.Duration(got))
	}
}

func TestMemoryReinstallingTheHeldTokenKeepsItsHold(t *testing.T) {
	m := newTestMemory(true)
	m.install(copyOf("a", 1, 1))
	m.clock = mono(70 * time.Second)
	m.hold(2, time.Hour) // until 70s + half of the 30s left
	held := m.l1.Load()
	if !held.held || held.softUntil != mono(85*time.Second) {
		t.Fatalf("held=%v until %v, want held until 85s", held.held, time.Duration(held.softUntil))
	}
	// The same token read again comes with its own, earlier moment.
	again := copyOf("a", 1, 1)
	if !m.install(again) {
		t.Fatal("the same token not installed again")
	}
	s := m.l1.Load()
	if !s.held || s.softUntil != held.softUntil || s.dueAt < s.softUntil {
		t.Fatalf("re-install lost the hold: held=%v until %v due %v", s.held, time.Duration(s.softUntil), time.Duration(s.dueAt))
	}
	if again.held || again.softUntil != mono(80*time.Second) {
		t.Fatal("install changed the snapshot it was given")
	}
}

func TestMemoryWithoutL1KeepsOnlyTheLastCopy(t *testing.T) {
	m := newTestMemory(false)
	s := copyOf("a", 1, 1)
	if m.install(s) {
		t.Fatal("install reported a change of l1 without an in-memory copy")
	}
	m.set(copyOf("b", 2, 2))
	if m.l1.Load() != nil || m.valid() != nil {
		t.Fatal("a copy is served without WithL1")
	}
	if m.served() != s || m.arms != 0 {
		t.Fatalf("served %v, armed %d times; want the last install, never armed", m.served(), m.arms)
	}
}

func TestMemoryExpireSoftMakesTheCopyDueWithoutEndingIt(t *testing.T) {
	m := newTestMemory(true)
	m.install(copyOf("a", 1, 1))
	m.expireSoft()
	s := m.l1.Load()
	if s.softUntil != math.MinInt64 || s.validUntil != mono(100*time.Second) || m.valid() != s {
		t.Fatalf("after expireSoft: soft %d valid %v", s.softUntil, time.Duration(s.validUntil))
	}
	m.clock = s.validUntil
	if m.valid() != nil {
		t.Fatal("a copy served at the end of its validity")
	}
}

func TestMemoryRejectionIsBoundedByGeneration(t *testing.T) {
	m := newTestMemory(true)
	fpA, fpB := copyOf("a", 0, 0).fp, copyOf("b", 0, 0).fp
	m.install(copyOf("a", 3, 1))
	m.reject(fpA, math.MaxInt64)
	if held := m.forget(fpA, 0); held != 3 || m.l1.Load() != nil {
		t.Fatalf("forget: held generation %d, copy %v; want 3, none", held, m.l1.Load())
	}
	if !m.servedRejected(Token{AccessToken: "a"}) {
		t.Fatal("a flight's token, invalidated meanwhile, is served")
	}
	m.rejectUpTo(fpA, 3)
	if !m.isRejected(fpA, 3) || m.isRejected(fpA, 4) || m.isRejected(fpB, 1) {
		t.Fatal("rejection not bounded by the generation deleted")
	}
	m.rejectUpTo(fpB, 9) // not the token rejected: no change
	if !m.isRejected(fpA, 3) {
		t.Fatal("bounding another token's rejection changed this one")
	}
	m.unreject(fpA)
	if m.isRejected(fpA, 1) {
		t.Fatal("the issuer returned the token again, and it is still rejected")
	}
}

// The fleet's "invalidated" event bounds a rejection to the generation
// deleted; a replica's own invalidation of the same token, which found the
// key already gone (it knows no generation), must not lower that bound, in
// either order, or a read that raced the deletion brings the token back.
func TestMemoryRejectionBoundIsNeverLowered(t *testing.T) {
	fpA := copyOf("a", 0, 0).fp
	t.Run("event during the replica's own invalidation", func(t *testing.T) {
		m := newTestMemory(true)
		known := m.knownGen(fpA)
		m.reject(fpA, math.MaxInt64)     // the replica's invalidation starts
		m.reject(fpA, 2)                 // the fleet's event: generation 2 deleted
		m.rejectUpTo(fpA, max(0, known)) // Redis: nothing deleted here
		if !m.isRejected(fpA, 2) {
			t.Fatal("the token at generation 2, deleted by the fleet, is no longer rejected")
		}
	})
	t.Run("event before the replica's own invalidation", func(t *testing.T) {
		m := newTestMemory(true)
		m.install(copyOf("a", 2, 1))
		m.reject(fpA, 2) // the event drops the copy and bounds the rejection
		m.forget(fpA, 0)
		known := m.knownGen(fpA)
		m.reject(fpA, math.MaxInt64)
		m.rejectUpTo(fpA, max(0, known))
		if !m.isRejected(fpA, 2) || m.isRejected(fpA, 3) {
			t.Fatalf("rejection after event then invalidation: rejects 2 %v, 3 %v; want true, false", m.isRejected(fpA, 2), m.isRejected(fpA, 3))
		}
	})
}

func TestMemoryForgetLeavesAnotherToken(t *testing.T) {
	m := newTestMemory(true)
	fpA, fpB := copyOf("a", 0, 0).fp, copyOf("b", 0, 0).fp
	s := copyOf("b", 4, 1)
	m.install(s)
	if held := m.forget(fpA, 0); held != 0 || m.l1.Load() != s {
		t.Fatal("invalidating a token dropped another one")
	}
	if m.forget(fpB, 3); m.l1.Load() != s {
		t.Fatal("invalidating generation 3 dropped generation 4")
	}
	if m.forget("", 0); m.l1.Load() != nil {
		t.Fatal("invalidating any token kept the copy")
	}
}

func TestMemoryFloorIsTheHigherOfStoredAndHeld(t *testing.T) {
	m := newTestMemory(true)
	if got := m.floor(7); got != 7 {
		t.Fatalf("floor without a copy: %d, want 7", got)
	}
	m.install(copyOf("a", 9, 1))
	if got := m.floor(7); got != 9 {
		t.Fatalf("floor: %d, want the held 9 (Redis lost the write)", got)
	}
	if got := m.floor(11); got != 11 {
		t.Fatalf("floor: %d, want the stored 11", got)
	}
}
