package tokencache

import (
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// This file is one token's state on this replica: the immutable snapshot
// callers are served, the order in which copies replace each other
// (install), the moments that keep background work off (put off, hold,
// later), the token this replica invalidated, which no read may bring
// back, Redis's last "absent" answer, which no read that started before it
// may undo, and what the API said of the tokens it was sent (the 401
// evidence Transport decides by). It knows nothing of Redis, the lock or
// the issuer: every change is a transition under one mutex, driven by a
// clock, that publishes the copy through one atomic pointer; it tells its
// owner when the copy's next moment moved.

// snapshot is an immutable in-memory copy of the token. Times are on the
// local monotonic clock: validUntil derived from how long the token was
// still valid on Redis's clock, timed from before the request that read it
// (the safe side); the moments (dueAt, next) timed from when the reply
// arrived, so a replica paused between the two neither serves a token late
// nor refreshes it early.
//
// A copy has one next moment, and a reason for it: before next no
// background work runs at all; at next the background work re-reads
// Redis, and refreshes ahead if the copy is due (see refreshAt). dueAt is
// the token's own refresh-ahead moment, which no transition moves; the
// next moment is that moment, or an earlier one (the L1's re-check), or
// another one for the reason that set it (a write-back, a put-off, a
// hold). A put-off past dueAt puts the refresh off too.
type snapshot struct {
	tok        Token
	gen        int64
	fp         string // token fingerprint
	validUntil mono   // never served at or after this
	dueAt      mono   // the token's refresh-ahead moment (jittered)
	next       mono   // the copy's next moment: before it, no background work
	why        reason // why next is when it is
	storedMS   int64  // Redis's TIME when the token was stored; 0: not stored (yet)
	born       mono   // when the issuer minted it: its expiry less its lifetime
	// ticket orders the copy against Redis's "absent" answers: the ticket
	// of the read that brought it, taken when the read started, or, for a
	// token this replica stored, one taken when the write's reply came.
	ticket uint64
}

// reason is why a copy's next moment is when it is.
type reason uint8

const (
	// reasonAhead: the token's refresh-ahead moment (dueAt).
	reasonAhead reason = iota
	// reasonRecheck: the L1's maximum age, or a re-check asked now (a
	// failure the fleet reported, see memory.expireSoft): re-read Redis.
	reasonRecheck
	// reasonWriteBack: a token fetched while Redis was down, to write back.
	reasonWriteBack
	// reasonLater: put off (Redis unreachable, a refresh failed, another
	// replica holds the lock): look again then.
	reasonLater
	// reasonHeld: another replica announced it is refreshing; its
	// "refreshed" (or "failed") will tell us, and at this moment we try
	// ourselves, whatever we heard. A hold that stands is not extended.
	reasonHeld
)

// String names r for logs and test failures.
func (r reason) String() string {
	switch r {
	case reasonAhead:
		return "refresh-ahead"
	case reasonRecheck:
		return "re-check"
	case reasonWriteBack:
		return "write-back"
	case reasonLater:
		return "put off"
	case reasonHeld:
		return "held for another replica's refresh"
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// refreshAt is when the background work refreshes s ahead of expiry rather
// than only re-reading Redis: its refresh-ahead moment, or its next
// moment if that was put off past it.
func (s *snapshot) refreshAt() mono { return max(s.dueAt, s.next) }

// due reports whether s is to be refreshed ahead at now.
func (s *snapshot) due(now mono) bool { return now >= s.refreshAt() }

// newer reports whether s holds a later token than o: a higher fencing
// generation, or, at the same generation, stored later by Redis's clock.
// No replica's clock takes part: replicas whose clocks differ agree on the
// order. Generations go back when Redis loses a write (a failover, a
// restart without persistence), so two different tokens may share one;
// the next refresh draws above both (see memory.floor).
func (s *snapshot) newer(o *snapshot) bool { return o.before(s.gen, s.storedMS) }

// before reports whether s holds an earlier token than the one stored with
// generation gen at storedMS (see newer).
func (s *snapshot) before(gen, storedMS int64) bool {
	if gen != s.gen {
		return gen > s.gen
	}
	return storedMS > s.storedMS
}

// sameStored reports whether s and o are copies of one stored value: the
// same token, generation and store time.
func (s *snapshot) sameStored(o *snapshot) bool {
	return s.fp == o.fp && s.gen == o.gen && s.storedMS == o.storedMS
}

// memory is the state of the token one replica serves. The hot path reads
// l1 with one atomic load and no lock; every change is made under mu.
type memory struct {
	l1 atomic.Pointer[snapshot] // the copy served; nil: none (or withL1(false), a test hook); stored under mu

	tickets atomic.Uint64 // the last read ticket handed out
	// calm is the token the API last accepted while no rejection streak
	// runs, and whether that acceptance is recorded for the fleet:
	// Transport's success path checks it without the lock.
	calm atomic.Pointer[calmToken]

	mu sync.Mutex // guards everything below
	// last is the copy last installed, kept even without the in-memory
	// copy (withL1(false), a test hook): what Transport judges a 401 by.
	last     *snapshot
	rejected rejection  // the last token invalidated here
	absent   uint64     // the highest ticket of a read Redis answered "absent"
	api      evidence   // what the API said of the tokens sent to it
	fail     failState  // the last failed refresh (see failures)
	back     failStreak // the failures in a row and their window
	pending  *Token     // fetched while Redis was down: to write back

	keep  bool        // copies are kept in l1 (off: withL1(false), a test hook)
	now   func() mono // the cache's monotonic clock
	moved func()      // called after the copy or its next moment changed (arms the timer)
}

// rejection is the token this replica last invalidated, up to the
// generation it was stored with: a read that raced the invalidation must
// not bring it back. It is bounded by the generation, never a blacklist of
// the token: an issuer may hand the same still-valid token out again, and
// once it has, the token is stored under a newer generation and served.
// Until Redis says which generation it deleted (bounded false), every copy
// of the token is rejected. The bound only ever rises.
type rejection struct {
	fp      string
	gen     int64
	bounded bool
}

// rejects reports whether r rejects the token fp stored with generation gen.
func (r *rejection) rejects(fp string, gen int64) bool {
	return r.fp != "" && r.fp == fp && (!r.bounded || gen <= r.gen)
}

// ticket is the ticket of a read that starts now (see snapshot.ticket).
func (m *memory) ticket() uint64 { return m.tickets.Add(1) }

// publish makes s the copy served; called with mu held.
func (m *memory) publish(s *snapshot) {
	m.l1.Store(s)
}

// install makes s the in-memory copy, unless this replica invalidated it,
// Redis answered "absent" to a read that started after the one that
// brought s, or a newer token that is still valid is already there (see
// snapshot.newer). Installing a copy of the value already held keeps the
// longer validity of the two, and the hold while one stands (a put-off
// for another reason ends: the copy read has its own moments). It
// reports whether s (or its merge with the copy held) is now the copy the
// entry serves.
func (m *memory) install(s *snapshot) bool {
	m.mu.Lock()
	ok, changed := m.installLocked(s)
	m.mu.Unlock()
	if changed {
		m.moved()
	}
	return ok
}

func (m *memory) installLocked(s *snapshot) (ok, changed bool) {
	if m.rejected.rejects(s.fp, s.gen) || s.ticket < m.absent {
		return false, false
	}
	m.last = s
	if !m.keep {
		m.clearBelowLocked(s.gen)
		return true, false
	}
	cur := m.l1.Load()
	if cur != nil && cur.fp != s.fp && cur.newer(s) && m.now() < cur.validUntil {
		return false, false
	}
	n := s
	if cur != nil && cur.fp == s.fp {
		c := *s
		if cur.sameStored(s) && cur.validUntil > c.validUntil {
			// Both reads bound the same value's validity from below: the
			// later bound is as safe, and a read that was slow to be
			// sent must not cut the copy short.
			c.validUntil = cur.validUntil
		}
		if cur.why == reasonHeld && cur.next > c.next {
			c.next, c.why = cur.next, reasonHeld
		}
		c.next = min(c.next, c.validUntil)
		n = &c
	}
	m.publish(n)
	m.clearBelowLocked(n.gen)
	return true, true
}

// absentAt records that Redis answered "absent" (no usable token) to the
// read with ticket t: a read that started before it may no longer install
// what it read, and a copy such a read brought is dropped. A copy brought
// by a read that started after it (a re-store Redis already held) stays.
func (m *memory) absentAt(t uint64) {
	m.mu.Lock()
	m.absent = max(m.absent, t)
	if cur := m.l1.Load(); cur != nil && cur.ticket < t {
		m.publish(nil)
	}
	m.mu.Unlock()
}

// set makes s the in-memory copy as it is, without ordering it against
// the one there and without arming the timer: a token fetched around a
// Redis that is down (see refresher.redisDown), the only copy there is.
func (m *memory) set(s *snapshot) {
	m.mu.Lock()
	s.ticket = m.ticket()
	if m.keep {
		m.publish(s)
	}
	m.mu.Unlock()
}

// served is the copy the entry serves: the in-memory one, or without it
// (withL1(false), a test hook) the one last read.
func (m *memory) served() *snapshot {
	if s := m.l1.Load(); s != nil {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.servedLocked()
}

// servedLocked is served with mu held.
func (m *memory) servedLocked() *snapshot {
	if s := m.l1.Load(); s != nil {
		return s
	}
	return m.last
}

// valid is the in-memory copy if it may still be served.
func (m *memory) valid() *snapshot {
	if s := m.l1.Load(); s != nil && m.now() < s.validUntil {
		return s
	}
	return nil
}

// later keeps background work on the current copy off for at least d
// (Redis is unreachable, a refresh failed, another replica holds the
// lock). It only ever pushes the moment later, never earlier (a newer copy
// installed meanwhile keeps its own moment) and never beyond the copy's
// validity.
func (m *memory) later(d time.Duration) {
	m.putOff(m.now()+mono(d), reasonLater)
}

// hold is later for another replica's "refreshing" for a generation above
// the copy's: its "refreshed" (or "failed") will tell us. A hold that
// stands is not extended, and a hold lasts at most d (the lock TTL) and
// at most half of the copy's remaining validity, after which the replica
// tries itself whatever it heard (the copy is due then, and the attempt
// comes before any new hold): an announcement lost with its sender, or
// forged, cannot keep the fleet from refreshing ahead. A re-check asked
// and not yet made is not held off either: it was asked because an event
// may have been missed.
func (m *memory) hold(gen int64, d time.Duration) {
	s := m.l1.Load()
	if s == nil || s.why == reasonHeld || gen <= s.gen {
		return
	}
	now := m.now()
	if s.why == reasonRecheck && s.next <= now {
		return
	}
	m.putOff(now+min(mono(d), (s.validUntil-now)/2), reasonHeld)
}

// putOff moves the copy's next moment to until (capped at its validity),
// for the reason why, if that is later; a hold that stands is not
// extended.
func (m *memory) putOff(until mono, why reason) {
	m.mu.Lock()
	s := m.l1.Load()
	if s == nil {
		m.mu.Unlock()
		return
	}
	until = min(until, s.validUntil)
	if s.next >= until || (why == reasonHeld && s.why == reasonHeld) {
		m.mu.Unlock()
		return
	}
	n := *s
	n.next, n.why = until, why
	m.publish(&n)
	m.mu.Unlock()
	m.moved()
}

// expireSoft makes the next Token call re-check Redis in the background.
func (m *memory) expireSoft() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.l1.Load(); s != nil {
		n := *s
		n.next, n.why = math.MinInt64, reasonRecheck
		m.publish(&n)
	}
}

// floor is the generation a refresh draws above: the stored token's
// (stored), or the one held in memory if that is newer (Redis lost the
// write that stored it: the next token must still order after it
// everywhere).
func (m *memory) floor(stored int64) int64 {
	if s := m.l1.Load(); s != nil && s.gen > stored {
		return s.gen
	}
	return stored
}

// pendingToken is the token fetched while Redis was down, to write back;
// nil: none.
func (m *memory) pendingToken() *Token {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pending
}

// setPending makes tok the token to write back.
func (m *memory) setPending(tok *Token) {
	m.mu.Lock()
	m.pending = tok
	m.mu.Unlock()
}

// swapPending makes next the token to write back if old still is, and
// reports whether it did.
func (m *memory) swapPending(old, next *Token) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending != old {
		return false
	}
	m.pending = next
	return true
}

// dropPending forgets the token to write back if it is the token fp (any,
// if empty).
func (m *memory) dropPending(fp string) {
	m.mu.Lock()
	if p := m.pending; p != nil && (fp == "" || p.Fingerprint() == fp) {
		m.pending = nil
	}
	m.mu.Unlock()
}

// isRejected reports whether the token fp, stored with generation gen,
// is one this replica invalidated.
func (m *memory) isRejected(fp string, gen int64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rejected.rejects(fp, gen)
}

// unreject forgets the rejection of fp: the issuer has just returned it,
// and the issuer's latest answer is authoritative.
func (m *memory) unreject(fp string) {
	m.mu.Lock()
	if m.rejected.fp == fp {
		m.rejected = rejection{}
	}
	m.mu.Unlock()
}

// servedRejected reports whether tok, returned by a shared flight, is the
// token this replica invalidated meanwhile (the flight read it before).
func (m *memory) servedRejected(tok Token) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.rejected
	if r.fp == "" || r.fp != tok.Fingerprint() {
		return false
	}
	s := m.l1.Load()
	return s == nil || s.fp != r.fp || r.rejects(s.fp, s.gen)
}

// invalidating is the start of this replica's invalidation of the token fp
// (any token if fp is empty) at generation gen (any if 0): it stops
// serving the token and rejects every copy of it until Redis says which
// generation it deleted (bound). It returns the highest generation it
// knows fp was stored with, for that bound.
func (m *memory) invalidating(fp string, gen int64) (known int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.last; l != nil && l.fp == fp {
		known = l.gen
	}
	if s := m.l1.Load(); s != nil && (fp == "" || s.fp == fp) && (gen == 0 || s.gen == gen) {
		if s.fp == fp {
			known = max(known, s.gen)
		}
		m.publish(nil)
	}
	if fp == "" {
		return known
	}
	if m.rejected.fp == fp {
		known = max(known, m.rejected.gen)
		m.rejected.bounded = false // until Redis answers; the bound it had stays its floor
	} else {
		m.rejected = rejection{fp: fp}
	}
	m.api.noteInvalidated(fp)
	return known
}

// bound ends the rejection of fp at generation gen (the one Redis deleted,
// or the highest known), if fp is still the token rejected. The bound is
// never lowered: a read that raced the deletion must not bring the token
// back.
func (m *memory) bound(fp string, gen int64) {
	m.mu.Lock()
	if m.rejected.fp == fp {
		m.rejected.gen = max(m.rejected.gen, gen)
		m.rejected.bounded = true
	}
	m.mu.Unlock()
}

// heardInvalidated applies the fleet's "invalidated" event for the token
// fp (any, if empty) deleted at generation gen (unknown, if 0): that token
// is rejected up to gen, and the copy held is dropped if it is that token
// or older than it (we missed its refresh), not if it is newer (Redis lost
// a write and its generations went back).
func (m *memory) heardInvalidated(fp string, gen int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if fp != "" {
		if m.rejected.fp == fp {
			m.rejected.gen = max(m.rejected.gen, gen)
		} else {
			m.rejected = rejection{fp: fp, gen: gen, bounded: true}
		}
		m.api.noteInvalidated(fp)
	}
	s := m.l1.Load()
	if s == nil {
		return
	}
	var drop bool
	if fp != "" {
		drop = s.fp == fp && (gen == 0 || s.gen <= gen) || s.gen < gen
	} else {
		drop = gen == 0 || s.gen <= gen
	}
	if drop {
		m.publish(nil)
	}
}
