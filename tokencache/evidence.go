package tokencache

import (
	"strconv"
	"strings"
	"time"
)

// This file is the evidence Transport decides a 401 by: what the API said
// of the tokens this replica sent it, and what the fleet told of it. A 401
// is the token's fault (invalidate it for the fleet, refetch, retry once)
// unless there is evidence that it is the API's: a token fetched after an
// invalidation was rejected before any success. Then, for a window that
// doubles with each such token in a row, the 401s of tokens the API has
// not accepted are returned to the caller without another invalidation, so
// an API that rejects every token costs the fleet a few issuer calls per
// window, whatever the request rate. A token the API accepted before, and
// the token that was served when an invalidation happened, are always
// invalidated and retried: a second revocation soon after a first one is
// the token's fault, not the API's.
//
// "Accepted before" is the fleet's knowledge, not this replica's: the
// first time a replica sees the API accept the token stored with a
// generation, it records that in Redis (the token's fingerprint at
// <token key>:accepted:<generation>, for the token's life; one write per
// token and replica, off the request path). Before a replica takes the 401
// of a token it has not seen accepted as evidence against the API, or
// holds it, it asks Redis: a token another replica's requests had
// accepted is revoked, not evidence.

// The rejection window (see Handle.Transport).
const (
	rejectionWindowMin = 10 * time.Second
	rejectionWindowMax = 5 * time.Minute
)

// askFleetEvery bounds how often a replica asks Redis whether the API
// accepted a token whose 401s it holds: at most once a second per token,
// however many 401s it holds.
const askFleetEvery = time.Second

// evidence is what an entry knows of the API's answers; guarded by
// memory.mu. The count of fresh tokens rejected in a row, and the window
// in which 401s are held, are the token's one back-off (memory.back, of
// the kind api), shared with the failures'.
type evidence struct {
	accepted    string // the last token the API accepted (fingerprint)
	invalidated string // the token last invalidated, here or by the fleet
	grownFor    string // the fresh token (fingerprint/generation) whose rejection last grew the streak
	loggedUntil mono   // the hold was last logged for the window until then
	marked      string // the token (fingerprint/generation) whose acceptance this replica last recorded for the fleet
	asked       string // the token (fingerprint/generation) whose held 401 last made this replica ask the fleet
	askedAt     mono   // when
}

// calmToken is a token the API accepted, at the generation this replica
// held it with then, and whether this replica recorded that for the fleet
// (see memory.calm).
type calmToken struct {
	access   string
	gen      int64
	recorded bool
}

// acceptance is a token's first acceptance on this replica, to record for
// the fleet (see entry.acceptedByAPI).
type acceptance struct {
	fp  string
	gen int64
	ttl time.Duration // the token's remaining life
}

// invalidated notes that the token fp was invalidated; mu held.
func (ev *evidence) noteInvalidated(fp string) { ev.invalidated = fp }

// holdUntil is the end of the window in which 401s of tokens the API has
// not accepted are held; mu held.
func (m *memory) holdUntil() mono {
	if !m.back.api {
		return 0
	}
	return m.back.until
}

// rejections is the count of fresh tokens the API rejected in a row; mu
// held.
func (m *memory) rejections() int32 {
	if !m.back.api {
		return 0
	}
	return m.back.n
}

// verdict401 decides a 401 the API answered to tok: hold it (return it to
// the caller as it is) or not (invalidate tok, refetch, retry). logNow is
// set once per window, for the one warning that says why 401s are held.
func (m *memory) verdict401(tok Token) (hold, logged bool, window time.Duration) {
	fp := tok.Fingerprint()
	m.mu.Lock()
	defer m.mu.Unlock()
	ev := &m.api
	now, until := m.now(), m.holdUntil()
	if now >= until {
		return false, false, 0
	}
	if fresh := ev.grownFor; fresh != "" && fresh[:strings.IndexByte(fresh, '/')] == fp {
		// The very token rejected fresh: an issuer that hands the
		// invalidated token back makes it the one invalidated, too.
		return true, m.logOnce(now), time.Duration(until - now)
	}
	if fp == ev.accepted || fp == ev.invalidated {
		return false, false, 0
	}
	return true, m.logOnce(now), time.Duration(until - now)
}

// logOnce reports whether the hold is to be logged: once per window; mu
// held.
func (m *memory) logOnce(now mono) bool {
	if now < m.api.loggedUntil {
		return false
	}
	m.api.loggedUntil = m.holdUntil()
	return true
}

// acceptedBy notes that the API accepted tok: it is no longer evidence
// against the API, and the rejection streak is over. With record (the
// API's answer was a success, not an error that only was no 401), mark is
// set (ok) the first time this replica sees the token stored with a
// generation accepted: the fact to record for the fleet. The copy held
// at another generation of the same token (re-stored after a write-back,
// or handed out again by the issuer) is a new fact to record.
func (m *memory) acceptedBy(tok Token, record bool) (mark acceptance, ok bool) {
	if p := m.calm.Load(); p != nil && p.access == tok.AccessToken && (p.recorded || !record) {
		if s := m.l1.Load(); s == nil || s.tok.AccessToken != tok.AccessToken || s.gen == p.gen {
			return mark, false // the hot path: the token already known good, no streak
		}
	}
	fp := tok.Fingerprint()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.api.accepted = fp
	m.api.grownFor = ""
	m.back.end(true)
	calm := &calmToken{access: tok.AccessToken}
	if s := m.storedAs(fp); s != nil {
		calm.gen = s.gen
		id := fp + "/" + strconv.FormatInt(s.gen, 10)
		calm.recorded = id == m.api.marked
		if record && !calm.recorded {
			mark = acceptance{fp: fp, gen: s.gen, ttl: time.Duration(s.validUntil - m.now())}
			if ok = mark.ttl > 0; ok {
				m.api.marked, calm.recorded = id, true
			}
		}
	}
	m.calm.Store(calm)
	return mark, ok
}

// unmark forgets that this replica recorded the acceptance of the token
// fp stored with generation gen (the write failed): its next acceptance
// records it again.
func (m *memory) unmark(fp string, gen int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.api.marked == fp+"/"+strconv.FormatInt(gen, 10) {
		m.api.marked = ""
		m.calm.Store(nil)
	}
}

// storedAs is the copy of the token fp this replica holds (or last read),
// if it was stored in Redis with a generation; mu held.
func (m *memory) storedAs(fp string) *snapshot {
	s := m.l1.Load()
	if s == nil || s.fp != fp {
		s = m.last
	}
	if s == nil || s.fp != fp || s.gen <= 0 {
		return nil
	}
	return s
}

// toAsk is the generation of tok to ask the fleet about (whether the API
// accepted it, see evidence.marked) before this replica takes its 401 as
// evidence against the API (hold false: the 401 of a token fetched after
// an invalidation) or holds it (hold true); 0 when the answer would change
// nothing or tok's generation is not known here. It changes nothing for a
// token known accepted here; without hold, for the token whose rejection
// grew the streak already; with hold, when verdict401 would not hold, or
// the token was asked about less than askFleetEvery ago.
func (m *memory) toAsk(tok Token, hold bool) int64 {
	fp := tok.Fingerprint()
	m.mu.Lock()
	defer m.mu.Unlock()
	ev := &m.api
	s := m.storedAs(fp)
	if s == nil || fp == ev.accepted {
		return 0
	}
	id := fp + "/" + strconv.FormatInt(s.gen, 10)
	if !hold {
		if id == ev.grownFor {
			return 0
		}
		return s.gen
	}
	now := m.now()
	grown := ev.grownFor != "" && ev.grownFor[:strings.IndexByte(ev.grownFor, '/')] == fp
	if now >= m.holdUntil() || fp == ev.invalidated && !grown || id == ev.asked && now-ev.askedAt < mono(askFleetEvery) {
		return 0
	}
	ev.asked, ev.askedAt = id, now
	return s.gen
}

// heardAccepted notes that the fleet recorded the API's acceptance of
// the token fp stored with generation gen: its 401 is a revocation
// (retried), not evidence; if its rejection grew the streak, the API
// accepted it since, and it is no longer held as the token rejected
// fresh. The streak is not ended: the acceptance may be older than it.
func (m *memory) heardAccepted(fp string, gen int64) {
	m.mu.Lock()
	m.api.accepted = fp
	if g := m.api.grownFor; g != "" && g[:strings.IndexByte(g, '/')] == fp {
		// Whatever generation it grew the streak at (0: fetched while
		// Redis was down, written back since; or before the issuer
		// handed it out again): the API accepted this token since.
		m.api.grownFor = ""
	}
	m.mu.Unlock()
}

// revokedFresh reports whether fresh, a token fetched after an
// invalidation and rejected at once, is one the API accepted before (here,
// or as the fleet recorded): then it was revoked, and is forgotten as
// accepted (accepted once, rejected now).
func (m *memory) revokedFresh(fresh Token) bool {
	fp := fresh.Fingerprint()
	m.mu.Lock()
	defer m.mu.Unlock()
	if fp != m.api.accepted {
		return false
	}
	m.api.accepted = ""
	m.calm.Store(nil)
	return true
}

// rejectedFresh notes that the API rejected fresh, a token fetched after
// an invalidation, before any success: evidence against the API. The
// streak grows once per token stored (many requests retried with one
// fresh token grow it once; a token an issuer hands back again is stored
// anew, at another generation), and 401s are held for the window it sets.
// It reports the streak and window for the fleet, and whether this call
// grew them.
func (m *memory) rejectedFresh(fresh Token) (streak int32, window time.Duration, grew bool) {
	fp := fresh.Fingerprint()
	m.mu.Lock()
	defer m.mu.Unlock()
	ev := &m.api
	m.calm.Store(nil)
	if fp == ev.accepted {
		ev.accepted = "" // accepted once, rejected now: revoked; not evidence against the API
		return m.rejections(), 0, false
	}
	id := fp + "/"
	if s := m.servedLocked(); s != nil && s.fp == fp {
		id += strconv.FormatInt(s.gen, 10)
	}
	if id == ev.grownFor {
		return m.rejections(), time.Duration(max(m.holdUntil()-m.now(), 0)), false
	}
	ev.grownFor = id
	window = m.back.grow(true, rejectionWindowMin, rejectionWindowMax)
	m.back.until = max(m.back.until, m.now()+mono(window))
	return m.back.n, window, true
}

// heardRejected applies another replica's evidence (its "rejected"
// event): hold 401s of tokens not accepted for the window it sets, never
// longer than the longest window.
func (m *memory) heardRejected(streak int32, window time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calm.Store(nil)
	m.back.adopt(true, streak)
	m.back.until = max(m.back.until, m.now()+mono(min(max(window, 0), rejectionWindowMax)))
}
