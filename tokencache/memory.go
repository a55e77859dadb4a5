package tokencache

import (
	"math"
	"sync/atomic"
	"time"
)

// This file is the in-memory copy of one token: the immutable snapshot
// callers are served, the order in which copies replace each other
// (install), the moments that keep background work off (put off, hold,
// later), and the token this replica invalidated, which no read may bring
// back. It knows nothing of Redis, the lock or the issuer: it is driven by
// a clock and tells its owner when the copy's next moment moved.

// snapshot is an immutable in-memory copy of the token. Times are on the
// local monotonic clock, derived from how long the token is still valid on
// Redis's clock when it was read.
type snapshot struct {
	tok        Token
	gen        int64
	fp         string // token fingerprint
	validUntil mono   // never served at or after this
	dueAt      mono   // refresh-ahead moment (jittered)
	softUntil  mono   // before this, no background work at all
	held       bool   // another replica's "refreshing" already put this copy's moment off
	storedMS   int64  // Redis's TIME when the token was stored; 0: not stored (yet)
	born       mono   // when the issuer minted it: its expiry less its lifetime
}

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

// memory holds the copy of one token a replica serves. Every change is a
// compare-and-swap of an immutable snapshot: the hot path reads it with
// one atomic load and no lock.
type memory struct {
	l1 atomic.Pointer[snapshot] // the copy served; nil: none (or WithL1(false))
	// last is the copy last installed, kept even without the in-memory
	// copy (WithL1(false)): what Transport judges a 401 by.
	last     atomic.Pointer[snapshot]
	rejected atomic.Pointer[rejection] // the last token invalidated here

	keep  bool        // WithL1: copies are kept in l1
	now   func() mono // the cache's monotonic clock
	moved func()      // called after the copy or its next moment changed (arms the timer)
}

// rejection is the token this replica last invalidated, up to the
// generation it was stored with: a read that raced the invalidation must
// not bring it back. It is bounded by the generation, never a blacklist of
// the token: an issuer may hand the same still-valid token out again, and
// once it has, the token is stored under a newer generation and served.
type rejection struct {
	fp  string
	gen int64
}

// install makes s the in-memory copy, unless a newer token that is still
// valid is already there (see snapshot.newer). Installing the same token
// again keeps a hold on its refresh-ahead moment. The caller has checked
// that s is not rejected (isRejected). It reports whether l1 changed.
func (m *memory) install(s *snapshot) bool {
	if !m.keep {
		m.last.Store(s)
		return false
	}
	for {
		cur := m.l1.Load()
		n := s
		if cur != nil && cur.fp != s.fp && cur.newer(s) && m.now() < cur.validUntil {
			return false
		}
		if cur != nil && cur.fp == s.fp && cur.held && cur.softUntil > s.softUntil {
			c := *s
			c.softUntil = min(cur.softUntil, c.validUntil)
			c.dueAt, c.held = max(c.dueAt, c.softUntil), true
			n = &c
		}
		if m.l1.CompareAndSwap(cur, n) {
			m.moved()
			return true
		}
	}
}

// set makes s the in-memory copy as it is, without ordering it against
// the one there and without arming the timer: a token fetched around a
// Redis that is down (see refresher.redisDown), the only copy there is.
func (m *memory) set(s *snapshot) {
	if m.keep {
		m.l1.Store(s)
	}
}

// served is the copy the entry serves: the in-memory one, or without it
// (WithL1(false)) the one last read.
func (m *memory) served() *snapshot {
	if s := m.l1.Load(); s != nil {
		return s
	}
	return m.last.Load()
}

// valid is the in-memory copy if it may still be served.
func (m *memory) valid() *snapshot {
	if s := m.l1.Load(); s != nil && m.now() < s.validUntil {
		return s
	}
	return nil
}

// drop stops serving s, unless another copy replaced it meanwhile.
func (m *memory) drop(s *snapshot) { m.l1.CompareAndSwap(s, nil) }

// later keeps background work on the current copy off for at least d
// (Redis is unreachable, a refresh failed, another replica holds the
// lock). It only ever pushes the moment later, never earlier (a newer copy
// installed meanwhile keeps its own moment) and never beyond the copy's
// validity.
func (m *memory) later(d time.Duration) {
	m.putOff(m.now()+mono(d), false)
}

// hold is later for another replica's "refreshing" for a generation above
// the copy's: its "refreshed" (or "failed") will tell us. A copy is held
// once, for at most d (the lock TTL) and at most half of its remaining
// validity, after which the replica tries again itself whatever it heard:
// an announcement lost with its sender, or forged, cannot keep the fleet
// from refreshing ahead.
func (m *memory) hold(gen int64, d time.Duration) {
	s := m.l1.Load()
	if s == nil || s.held || gen <= s.gen {
		return
	}
	now := m.now()
	m.putOff(now+min(mono(d), (s.validUntil-now)/2), true)
}

// putOff moves the copy's next moment to until (capped at its validity),
// if that is later; held marks the copy as held (a held copy is held once).
func (m *memory) putOff(until mono, held bool) {
	for {
		s := m.l1.Load()
		if s == nil {
			return
		}
		until := min(until, s.validUntil)
		if s.softUntil >= until || (held && s.held) {
			return
		}
		n := *s
		n.softUntil = until
		n.dueAt = max(n.dueAt, until)
		n.held = n.held || held
		if m.l1.CompareAndSwap(s, &n) {
			m.moved()
			return
		}
	}
}

// expireSoft makes the next Token call re-check Redis in the background.
func (m *memory) expireSoft() {
	s := m.l1.Load()
	if s == nil {
		return
	}
	n := *s
	n.softUntil = math.MinInt64
	m.l1.CompareAndSwap(s, &n)
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

// heldGen is the generation of the copy in memory; 0 without one.
func (m *memory) heldGen() int64 {
	if s := m.l1.Load(); s != nil {
		return s.gen
	}
	return 0
}

// isRejected reports whether the token fp, stored with generation gen,
// is one this replica invalidated.
func (m *memory) isRejected(fp string, gen int64) bool {
	r := m.rejected.Load()
	return r != nil && r.fp == fp && gen <= r.gen
}

// reject marks fp, up to generation gen, as invalidated.
func (m *memory) reject(fp string, gen int64) {
	m.rejected.Store(&rejection{fp: fp, gen: gen})
}

// unreject forgets the rejection of fp: the issuer has just returned it,
// and the issuer's latest answer is authoritative.
func (m *memory) unreject(fp string) {
	if r := m.rejected.Load(); r != nil && r.fp == fp {
		m.rejected.CompareAndSwap(r, nil)
	}
}

// servedRejected reports whether tok, returned by a shared flight, is the
// token this replica invalidated meanwhile (the flight read it before).
func (m *memory) servedRejected(tok Token) bool {
	r := m.rejected.Load()
	if r == nil || r.fp != tok.Fingerprint() {
		return false
	}
	s := m.l1.Load()
	return s == nil || s.fp != r.fp || s.gen <= r.gen
}

// forget stops serving the invalidated token fp (any token if fp is
// empty) at generation gen (any if 0), and returns the generation of the
// copy of fp it held, if any.
func (m *memory) forget(fp string, gen int64) (held int64) {
	for {
		s := m.l1.Load()
		if s != nil && s.fp == fp {
			held = s.gen
		}
		if s == nil || (fp != "" && s.fp != fp) || (gen != 0 && s.gen != gen) || m.l1.CompareAndSwap(s, nil) {
			return held
		}
	}
}

// rejectUpTo bounds the rejection of fp to generation gen, if fp is
// still the token rejected. A bound learnt meanwhile (the fleet's
// "invalidated" event for fp, with its generation) is never lowered: a
// replica whose own compare-and-delete found the key already gone knows
// no generation, and a read that raced the deletion must still not bring
// the token back.
func (m *memory) rejectUpTo(fp string, gen int64) {
	for {
		r := m.rejected.Load()
		if r == nil || r.fp != fp {
			return
		}
		g := gen
		if r.gen != math.MaxInt64 {
			g = max(g, r.gen)
		}
		if m.rejected.CompareAndSwap(r, &rejection{fp: fp, gen: g}) {
			return
		}
	}
}

// knownGen is the highest generation this replica knows fp was stored
// with: a bound of its rejection, or the copy last installed.
func (m *memory) knownGen(fp string) (gen int64) {
	if r := m.rejected.Load(); r != nil && r.fp == fp && r.gen != math.MaxInt64 {
		gen = r.gen
	}
	if l := m.last.Load(); l != nil && l.fp == fp {
		gen = max(gen, l.gen)
	}
	return gen
}
