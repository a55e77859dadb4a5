package tokencache

import (
	"fmt"
	"math"
	"strings"
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
		validUntil: mono(100 * time.Second), dueAt: mono(80 * time.Second), next: mono(80 * time.Second)}
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
	if s := m.l1.Load(); s.next != mono(80*time.Second) || s.why != reasonAhead || s.refreshAt() != mono(80*time.Second) {
		t.Fatalf("moment moved to %v (%v), refresh at %v; want 80s (refresh-ahead)", time.Duration(s.next), s.why, time.Duration(s.refreshAt()))
	}
	m.later(80 * time.Second) // 90s: later
	s := m.l1.Load()
	if s.next != mono(90*time.Second) || s.why != reasonLater || s.refreshAt() != mono(90*time.Second) {
		t.Fatalf("moment %v (%v), refresh at %v; want 90s, put off", time.Duration(s.next), s.why, time.Duration(s.refreshAt()))
	}
	if s.dueAt != mono(80*time.Second) {
		t.Fatalf("a put-off moved the token's own refresh-ahead moment to %v", time.Duration(s.dueAt))
	}
	m.later(time.Second) // 11s: earlier again
	if got := m.l1.Load(); got != s {
		t.Fatalf("moment moved from 90s to %v", time.Duration(got.next))
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
	if s.next != s.validUntil || s.refreshAt() != s.validUntil {
		t.Fatalf("moment %v, refresh at %v: beyond the validity %v", time.Duration(s.next), time.Duration(s.refreshAt()), time.Duration(s.validUntil))
	}
}

func TestMemoryHoldsACopyOnceForAtMostHalfItsValidity(t *testing.T) {
	m := newTestMemory(true)
	m.install(copyOf("a", 5, 1))
	m.clock = mono(20 * time.Second)
	m.hold(6, time.Hour) // until 20s + 40s: earlier than the moment
	if s := m.l1.Load(); s.why == reasonHeld || s.next != mono(80*time.Second) {
		t.Fatalf("a hold that ends before the moment moved it to %v (%v)", time.Duration(s.next), s.why)
	}
	m.clock = mono(70 * time.Second)
	m.hold(5, time.Hour) // not a newer generation
	if m.l1.Load().why == reasonHeld {
		t.Fatal("held by a refresh of the generation held")
	}
	m.hold(6, time.Hour)
	s := m.l1.Load()
	if want := mono(85 * time.Second); s.why != reasonHeld || s.next != want || s.refreshAt() != want {
		t.Fatalf("%v until %v, refresh at %v; want held until 85s (half of the 30s left)", s.why, time.Duration(s.next), time.Duration(s.refreshAt()))
	}
	m.clock = mono(84 * time.Second)
	m.hold(7, time.Hour)
	if got := m.l1.Load(); got != s {
		t.Fatalf("held twice: until %v", time.Duration(got.next))
	}
	// A short hold: the lock TTL bounds it.
	m2 := newTestMemory(true)
	m2.install(copyOf("a", 5, 1))
	m2.clock = mono(78 * time.Second)
	m2.hold(6, 5*time.Second)
	if got := m2.l1.Load().next; got != mono(83*time.Second) {
		t.Fatalf("a 5s hold at 78s put the moment off to %v, want 83s", time.Duration(got))
	}
}

func TestMemoryReinstallingTheHeldTokenKeepsItsHold(t *testing.T) {
	m := newTestMemory(true)
	m.install(copyOf("a", 1, 1))
	m.clock = mono(70 * time.Second)
	m.hold(2, time.Hour) // until 70s + half of the 30s left
	held := m.l1.Load()
	if held.why != reasonHeld || held.next != mono(85*time.Second) {
		t.Fatalf("%v until %v, want held until 85s", held.why, time.Duration(held.next))
	}
	// The same token read again comes with its own, earlier moment.
	again := copyOf("a", 1, 1)
	if !m.install(again) {
		t.Fatal("the same token not installed again")
	}
	s := m.l1.Load()
	if s.why != reasonHeld || s.next != held.next || s.refreshAt() != held.next {
		t.Fatalf("re-install lost the hold: %v until %v, refresh at %v", s.why, time.Duration(s.next), time.Duration(s.refreshAt()))
	}
	if again.why != reasonAhead || again.next != mono(80*time.Second) {
		t.Fatal("install changed the snapshot it was given")
	}
}

func TestMemoryWithoutL1KeepsOnlyTheLastCopy(t *testing.T) {
	m := newTestMemory(false)
	s := copyOf("a", 1, 1)
	if !m.install(s) {
		t.Fatal("install refused the only copy")
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
	if s.next != math.MinInt64 || s.why != reasonRecheck || s.validUntil != mono(100*time.Second) || m.valid() != s {
		t.Fatalf("after expireSoft: next %d (%v) valid %v", s.next, s.why, time.Duration(s.validUntil))
	}
	if s.due(mono(time.Second)) {
		t.Fatal("a re-check asked now made the copy due for a refresh")
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
	if known := m.invalidating(fpA, 0); known != 3 || m.l1.Load() != nil {
		t.Fatalf("invalidating: known generation %d, copy %v; want 3, none", known, m.l1.Load())
	}
	if !m.servedRejected(Token{AccessToken: "a"}) {
		t.Fatal("a flight's token, invalidated meanwhile, is served")
	}
	if !m.isRejected(fpA, 1000) {
		t.Fatal("before Redis answers, a newer copy of the invalidated token is not rejected")
	}
	m.bound(fpA, 3)
	if !m.isRejected(fpA, 3) || m.isRejected(fpA, 4) || m.isRejected(fpB, 1) {
		t.Fatal("rejection not bounded by the generation deleted")
	}
	m.bound(fpB, 9) // not the token rejected: no change
	if !m.isRejected(fpA, 3) || m.isRejected(fpB, 1) {
		t.Fatal("bounding another token's rejection changed this one")
	}
	m.unreject(fpA)
	if m.isRejected(fpA, 1) {
		t.Fatal("the issuer returned the token again, and it is still rejected")
	}
}

// Invalidations of one token meet on a replica: its own (which learns the
// generation deleted from Redis, or nothing when the key was already gone)
// and the fleet's events (which carry a generation, or none). Whatever
// their order, the bound never drops below the highest generation any of
// them named, and a read that raced a deletion never brings the token
// back. Every order of three such invalidations is tried.
func TestMemoryRejectionBoundIsNeverLowered(t *testing.T) {
	fpA := copyOf("a", 0, 0).fp
	type step struct {
		name string
		do   func(m *testMemory)
	}
	local := func(redisGen int64) step {
		return step{fmt.Sprintf("own invalidation (Redis deleted %d)", redisGen), func(m *testMemory) {
			known := m.invalidating(fpA, 0)
			m.bound(fpA, max(redisGen, known))
		}}
	}
	event := func(gen int64) step {
		return step{fmt.Sprintf("event (generation %d)", gen), func(m *testMemory) { m.heardInvalidated(fpA, gen) }}
	}
	steps := []step{local(0), event(2), event(0), local(2), event(1)}
	for i := range steps {
		for j := range steps {
			for k := range steps {
				if i == j || j == k || i == k {
					continue
				}
				m := newTestMemory(true)
				m.install(copyOf("a", 2, 1)) // the copy held: generation 2
				var names []string
				for _, st := range []step{steps[i], steps[j], steps[k]} {
					st.do(m)
					names = append(names, st.name)
				}
				seq := strings.Join(names, ", then ")
				if !m.isRejected(fpA, 2) {
					t.Errorf("%s: the token at generation 2, deleted, is no longer rejected", seq)
				}
				if m.isRejected(fpA, 3) {
					t.Errorf("%s: the token stored again at generation 3 is rejected", seq)
				}
				if m.install(copyOf("a", 2, 1)) {
					t.Errorf("%s: a read that raced the deletion brought the token back", seq)
				}
			}
		}
	}
}

func TestMemoryInvalidatingLeavesAnotherToken(t *testing.T) {
	m := newTestMemory(true)
	fpA, fpB := copyOf("a", 0, 0).fp, copyOf("b", 0, 0).fp
	s := copyOf("b", 4, 1)
	m.install(s)
	if known := m.invalidating(fpA, 0); known != 0 || m.l1.Load() != s {
		t.Fatal("invalidating a token dropped another one")
	}
	if m.invalidating(fpB, 3); m.l1.Load() != s {
		t.Fatal("invalidating generation 3 dropped generation 4")
	}
	if m.invalidating("", 0); m.l1.Load() != nil {
		t.Fatal("invalidating any token kept the copy")
	}
}

// Redis's "absent" is a transition a read that started before it cannot
// undo, in either order: the late read's install comes after the absent
// answer (refused), or lands between the re-check's start and its answer
// (dropped by the answer, compared by ticket, not by pointer).
func TestMemoryAbsentCannotBeUndoneByAnEarlierRead(t *testing.T) {
	t.Run("late install after the absent answer", func(t *testing.T) {
		m := newTestMemory(true)
		early := m.ticket() // the event's re-read starts
		recheck := m.ticket()
		m.absentAt(recheck) // the re-check finds the key gone
		late := copyOf("a", 1, 1)
		late.ticket = early
		if m.install(late) || m.l1.Load() != nil {
			t.Fatal("a read that started before Redis answered absent installed the deleted token")
		}
	})
	t.Run("install between the re-check's start and its answer", func(t *testing.T) {
		m := newTestMemory(true)
		held := copyOf("a", 1, 1)
		held.ticket = m.ticket()
		m.install(held)
		early := m.ticket()   // the event's re-read starts
		recheck := m.ticket() // the re-check starts
		again := copyOf("a", 1, 1)
		again.ticket = early
		if !m.install(again) { // the late re-read lands first
			t.Fatal("install refused before any absent answer")
		}
		m.absentAt(recheck)
		if m.l1.Load() != nil {
			t.Fatal("the re-check's absent answer left the copy the earlier read installed")
		}
	})
	t.Run("a read that started after the absent answer installs", func(t *testing.T) {
		m := newTestMemory(true)
		recheck := m.ticket()
		restored := copyOf("a", 2, 5)
		restored.ticket = m.ticket()
		m.install(restored)
		m.absentAt(recheck) // answered after the newer read installed
		if m.l1.Load() == nil {
			t.Fatal("an absent answer dropped a copy read after it started (a re-store)")
		}
	})
}

// Two reads of one stored value bound its validity from below; the copy
// keeps the later bound, whichever read installs last.
func TestMemoryReinstallingTheSameValueKeepsTheLongerValidity(t *testing.T) {
	m := newTestMemory(true)
	good := copyOf("a", 1, 1)
	m.install(good)
	paused := copyOf("a", 1, 1)
	paused.validUntil = mono(60 * time.Second) // sent before a pause
	paused.dueAt, paused.next = mono(50*time.Second), mono(50*time.Second)
	m.install(paused)
	if s := m.l1.Load(); s.validUntil != good.validUntil {
		t.Fatalf("validity %v, want the better bound %v", time.Duration(s.validUntil), time.Duration(good.validUntil))
	}
}

func TestEvidenceHoldsOnlyUnprovenTokensWithinAWindow(t *testing.T) {
	a, b, c := Token{AccessToken: "a"}, Token{AccessToken: "b"}, Token{AccessToken: "c"}
	m := newTestMemory(true)
	if hold, _, _ := m.verdict401(a); hold {
		t.Fatal("a 401 held without evidence")
	}
	m.acceptedBy(a, true)
	m.invalidating(a.Fingerprint(), 0)
	streak, window, grew := m.rejectedFresh(b) // b, fetched after a's invalidation, rejected at once
	if streak != 1 || window != rejectionWindowMin || !grew {
		t.Fatalf("first fresh rejection: streak %d window %v grew %v", streak, window, grew)
	}
	if _, _, grew := m.rejectedFresh(b); grew {
		t.Fatal("the same fresh token grew the streak twice")
	}
	for _, tc := range []struct {
		tok  Token
		hold bool
		why  string
	}{
		{b, true, "the fresh token rejected before any success"},
		{c, true, "another token the API has not accepted, within the window"},
		{a, false, "the token served when the invalidation happened"},
	} {
		if hold, _, _ := m.verdict401(tc.tok); hold != tc.hold {
			t.Errorf("%s: hold %v, want %v", tc.why, hold, tc.hold)
		}
	}
	m.acceptedBy(c, true)
	if hold, _, _ := m.verdict401(c); hold {
		t.Error("a token the API accepted is held")
	}
	if hold, _, _ := m.verdict401(b); hold {
		t.Error("a success ended the streak, yet 401s are still held")
	}
	m.clock += mono(time.Hour)
	m.rejectedFresh(b)
	if s, _, grew := m.rejectedFresh(c); s != 1 || grew {
		t.Fatalf("a token accepted, then rejected: streak %d, grew %v; want it not to count", s, grew)
	}
	m.clock += mono(time.Hour)
	if hold, _, _ := m.verdict401(b); hold {
		t.Error("held after the window ended")
	}
	for i, want := range []time.Duration{20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, rejectionWindowMax, rejectionWindowMax} {
		if _, w, _ := m.rejectedFresh(Token{AccessToken: fmt.Sprint("fresh-", i)}); w != want {
			t.Fatalf("window after %d fresh rejections: %v, want %v", i+2, w, want)
		}
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

// Each transition of the copy's one next moment, from a copy fresh from
// Redis (due at 80s, valid until 100s), at 20s: where the moment goes, why,
// and when the background work refreshes rather than only re-reads.
func TestMemoryNextMomentAndItsReasonForEachTransition(t *testing.T) {
	const s = mono(time.Second)
	for _, tc := range []struct {
		name      string
		copy      func() *snapshot // the copy installed first
		step      func(m *testMemory)
		next      mono
		why       reason
		refreshAt mono
	}{
		{"fresh from Redis", nil, func(*testMemory) {}, 80 * s, reasonAhead, 80 * s},
		{"the L1's re-check comes first", func() *snapshot {
			c := copyOf("a", 1, 1)
			c.next, c.why = 50*s, reasonRecheck
			return c
		}, func(*testMemory) {}, 50 * s, reasonRecheck, 80 * s},
		{"put off before the refresh-ahead moment", nil, func(m *testMemory) { m.later(30 * time.Second) }, 80 * s, reasonAhead, 80 * s},
		{"put off past it", nil, func(m *testMemory) { m.later(70 * time.Second) }, 90 * s, reasonLater, 90 * s},
		{"put off past the validity", nil, func(m *testMemory) { m.later(time.Hour) }, 100 * s, reasonLater, 100 * s},
		{"a re-check put off", func() *snapshot {
			c := copyOf("a", 1, 1)
			c.next, c.why = 25*s, reasonRecheck
			return c
		}, func(m *testMemory) { m.later(10 * time.Second) }, 30 * s, reasonLater, 80 * s},
		{"held by a newer generation's refresh", nil, func(m *testMemory) { m.clock = 70 * s; m.hold(2, time.Hour) }, 85 * s, reasonHeld, 85 * s},
		{"held, then put off: held again", nil, func(m *testMemory) {
			m.clock = 70 * s
			m.hold(2, time.Hour)
			m.clock = 86 * s
			m.later(4 * time.Second)
			m.hold(3, time.Hour)
		}, 93 * s, reasonHeld, 93 * s}, // 86s + half of the 14s left
		{"held, then the same value re-read", nil, func(m *testMemory) {
			m.clock = 70 * s
			m.hold(2, time.Hour)
			m.install(copyOf("a", 1, 1))
		}, 85 * s, reasonHeld, 85 * s},
		{"put off, then the same value re-read", nil, func(m *testMemory) {
			m.later(70 * time.Second)
			m.install(copyOf("a", 1, 1))
		}, 80 * s, reasonAhead, 80 * s},
		{"a re-check asked now", nil, func(m *testMemory) { m.expireSoft() }, math.MinInt64, reasonRecheck, 80 * s},
		{"a re-check asked now is not held off", nil, func(m *testMemory) {
			m.expireSoft()
			m.hold(2, time.Hour)
		}, math.MinInt64, reasonRecheck, 80 * s},
		{"put off, then a re-check asked now", nil, func(m *testMemory) {
			m.later(70 * time.Second)
			m.expireSoft()
		}, math.MinInt64, reasonRecheck, 80 * s},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMemory(true)
			c := copyOf("a", 1, 1)
			if tc.copy != nil {
				c = tc.copy()
			}
			m.install(c)
			m.clock = 20 * s
			tc.step(m)
			got := m.l1.Load()
			if got.next != tc.next || got.why != tc.why || got.refreshAt() != tc.refreshAt {
				t.Fatalf("next %v (%v), refresh at %v; want %v (%v), refresh at %v",
					time.Duration(got.next), got.why, time.Duration(got.refreshAt()),
					time.Duration(tc.next), tc.why, time.Duration(tc.refreshAt))
			}
			if got.dueAt != c.dueAt || got.validUntil != c.validUntil {
				t.Fatalf("the transition moved the token's own moments: due %v, valid until %v", time.Duration(got.dueAt), time.Duration(got.validUntil))
			}
		})
	}
}

// A replica records a token's acceptance for the fleet once per
// generation it was stored with, on a success only: not for a copy
// fetched while Redis was down (no generation yet) until it is written
// back, again when the same token is stored anew, and again after a
// record that failed.
func TestEvidenceRecordsEachGenerationsFirstSuccessForTheFleet(t *testing.T) {
	a := Token{AccessToken: "a"}
	m := newTestMemory(true)
	accept := func(record bool) (int64, bool) {
		mark, ok := m.acceptedBy(a, record)
		return mark.gen, ok
	}
	unstored := copyOf("a", 0, 0) // fetched while Redis was down
	m.set(unstored)
	if _, ok := accept(true); ok {
		t.Fatal("recorded the acceptance of a token with no generation")
	}
	m.install(copyOf("a", 5, 2)) // written back
	if _, ok := accept(false); ok {
		t.Fatal("recorded an answer that was no success (not a 401, not below 400 either)")
	}
	if gen, ok := accept(true); !ok || gen != 5 {
		t.Fatalf("after the write-back: recorded %v at generation %d, want generation 5", ok, gen)
	}
	if _, ok := accept(true); ok {
		t.Fatal("recorded generation 5 twice")
	}
	m.unmark(a.Fingerprint(), 5) // the write failed
	if gen, ok := accept(true); !ok || gen != 5 {
		t.Fatalf("after a failed record: recorded %v at generation %d, want generation 5 again", ok, gen)
	}
	m.install(copyOf("a", 6, 3)) // the issuer handed it out again
	if gen, ok := accept(true); !ok || gen != 6 {
		t.Fatalf("after the re-store: recorded %v at generation %d, want generation 6", ok, gen)
	}
	if _, ok := accept(true); ok {
		t.Fatal("recorded generation 6 twice")
	}
}

// The fleet's record that the API accepted a token ends the hold its
// rejection set here, whatever generation the rejection was counted at.
func TestEvidenceTheFleetsAcceptanceEndsTheHoldOfTheTokenAtAnyGeneration(t *testing.T) {
	a, f := Token{AccessToken: "a"}, Token{AccessToken: "f"}
	m := newTestMemory(true)
	m.acceptedBy(a, true)
	m.invalidating(a.Fingerprint(), 0)
	m.set(copyOf("f", 0, 0)) // f fetched while Redis was down, rejected at once
	if _, _, grew := m.rejectedFresh(f); !grew {
		t.Fatal("f's rejection did not grow the streak")
	}
	if hold, _, _ := m.verdict401(f); !hold {
		t.Fatal("f's 401 not held after its rejection")
	}
	m.install(copyOf("f", 7, 5)) // written back at generation 7; another replica's success recorded it
	m.heardAccepted(f.Fingerprint(), 7)
	if hold, _, _ := m.verdict401(f); hold {
		t.Fatal("f's 401 held although the fleet recorded the API accepting it")
	}
}
