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

// The rejection window (see Handle.Transport).
const (
	rejectionWindowMin = 10 * time.Second
	rejectionWindowMax = 5 * time.Minute
)

// evidence is what an entry knows of the API's answers; guarded by
// memory.mu. The count of fresh tokens rejected in a row, and the window
// in which 401s are held, are the token's one back-off (memory.back, of
// the kind api), shared with the failures'.
type evidence struct {
	accepted    string // the last token the API accepted (fingerprint)
	invalidated string // the token last invalidated, here or by the fleet
	grownFor    string // the fresh token (fingerprint/generation) whose rejection last grew the streak
	loggedUntil mono   // the hold was last logged for the window until then
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
// against the API, and the rejection streak is over.
func (m *memory) acceptedBy(tok Token) {
	if p := m.calm.Load(); p != nil && *p == tok.AccessToken {
		return // the hot path: the token already known good, no streak
	}
	fp := tok.Fingerprint()
	m.mu.Lock()
	m.api.accepted = fp
	m.api.grownFor = ""
	m.back.end(true)
	m.calm.Store(&tok.AccessToken)
	m.mu.Unlock()
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
