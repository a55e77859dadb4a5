package tokencache

import (
	"context"
	"errors"
	"strings"
	"time"
)

// This file is the evidence rule of Transport (see evidence.go) for a 401
// that a caller reports instead of Transport seeing it: a local token
// endpoint whose clients call the API themselves and report the tokens it
// rejects. Such a caller sends no "accepted" signal, so the rule stands in
// for it with the token's age: a token reported rejected when it is older
// than the rejection window it would open was in use that long without a
// report, and is taken as accepted in between.

// RejectedResult is what Handle.Rejected did with a reported 401.
type RejectedResult struct {
	// Invalidated: this report (or a concurrent report of the same token
	// on this replica, which it joined) deleted the token for the fleet;
	// a new one was fetched. False with neither Held nor Stale: another
	// replica deleted it first.
	Invalidated bool
	// Held: the 401 is taken as the API's fault, not the token's (a token
	// fetched after an invalidation was rejected before it could have
	// been used): the token is kept, and so are the 401s of tokens the
	// API has not accepted, until HeldFor has passed.
	Held    bool
	HeldFor time.Duration
	// Stale: the token is not the one served now (already replaced, or
	// none is cached); nothing was done.
	Stale bool
}

// Rejected applies Transport's rule for a 401 to the token with
// fingerprint fp, which a caller reports the API rejected: one
// invalidation per token for the fleet (concurrent reports of one token
// on this replica share it; a token already replaced is left alone), and
// no invalidation at all for a token fetched after an invalidation that
// is reported rejected before it could have been used: that grows the
// rejection streak and opens the rejection window (10 s, doubling up to 5
// minutes), during which the 401s of tokens the API has not accepted are
// held. A token reported when it is older than the window it would open
// counts as accepted in between: the streak ends and the token is
// invalidated.
//
// Unlike InvalidateFingerprint, which deletes on the caller's word, a
// caller that reports every token it gets costs the fleet about one issuer
// call per rejection window.
func (h *Handle) Rejected(ctx context.Context, fp string) (RejectedResult, error) {
	if fp == "" {
		return RejectedResult{}, errors.New("tokencache: Rejected needs the fingerprint of the token that failed")
	}
	e, err := h.entry()
	if err != nil {
		return RejectedResult{}, err
	}
	// The token served now: the copy in memory, else Redis's. Never
	// fetched: with none cached, the token reported is not the current
	// one, and judging a report must cost no issuer call.
	var cur Token
	if s := e.mem.valid(); s != nil {
		cur = s.tok
	} else {
		tok, ok, err := e.readAndInstall(ctx)
		if err != nil {
			return RejectedResult{}, err
		}
		if !ok {
			return RejectedResult{Stale: true}, nil
		}
		cur = tok
	}
	if cur.Fingerprint() != fp {
		return RejectedResult{Stale: true}, nil
	}
	if e.holdRejection(ctx, cur) {
		return e.held(), nil
	}
	atOnce, used := e.reportedAge(cur)
	if used {
		// Taken as accepted here; not recorded for the fleet, as the
		// report invalidates it now.
		e.mem.acceptedBy(cur, false)
	}
	if atOnce {
		// A token the fleet saw the API accept (through another
		// replica's Transport) is revoked, not evidence; so is one Redis
		// cannot say of (the report is taken as the token's fault).
		if acc, err := e.fleetAccepted(ctx, cur, false); acc || err != nil {
			atOnce = false
		}
	}
	if atOnce && e.apiRejectedFresh(cur) {
		e.c.stats.rejectionsHeld.Add(1)
		return e.held(), nil
	}
	fresh, deleted, err := e.replaceReported(ctx, cur)
	if err != nil {
		return RejectedResult{Invalidated: deleted}, err
	}
	if fresh.AccessToken == cur.AccessToken {
		// The issuer handed the rejected token back: a fresh token
		// rejected at once.
		e.apiRejectedFresh(fresh)
		return e.held(), nil
	}
	return RejectedResult{Invalidated: deleted}, nil
}

// held is the result of a held 401.
func (e *entry) held() RejectedResult {
	e.mem.mu.Lock()
	until := e.mem.holdUntil()
	e.mem.mu.Unlock()
	return RejectedResult{Held: true, HeldFor: time.Duration(max(until-e.c.monoNow(), 0))}
}

// reportedAge judges the age of tok, reported rejected and not held. atOnce:
// tok was fetched after an invalidation, the API is not known to have
// accepted it, its rejection has not grown the streak yet, and it is
// younger than the window its rejection would open. used: it is older than
// that window, so it was in use without a report (taken as accepted).
func (e *entry) reportedAge(tok Token) (atOnce, used bool) {
	fp := tok.Fingerprint()
	m := &e.mem
	m.mu.Lock()
	defer m.mu.Unlock()
	// The copy served, read under the same lock as the evidence: its age
	// and the evidence are of one moment.
	s := m.servedLocked()
	ev := &m.api
	if g := ev.grownFor; g != "" && g[:strings.IndexByte(g, '/')] == fp {
		return false, false // its rejection grew the streak once: now it is the token's fault
	}
	if s == nil || s.fp != fp {
		return false, false // its age is unknown here: the token's fault
	}
	window := doubled(rejectionWindowMin, rejectionWindowMax, m.rejections()+1)
	if m.now()-s.born >= mono(window) {
		return false, fp != ev.accepted
	}
	return ev.invalidated != "" && fp != ev.invalidated && fp != ev.accepted, false
}

// replaceReported is replace for a reported 401: it also says whether
// the token was deleted in Redis. Concurrent reports of one token on this
// replica share one invalidation and one refetch (their own flight:
// Transport's carries another result).
func (e *entry) replaceReported(ctx context.Context, tok Token) (Token, bool, error) {
	type result struct {
		fresh   Token
		deleted bool
	}
	c := e.c
	v, err, _ := c.sf.Do("\x00report:"+e.k.Token+":"+tok.Fingerprint(), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.refreshTimeout)
		defer cancel()
		deleted, err := e.invalidate(ctx, tok.Fingerprint(), 0)
		if err != nil {
			return result{}, err
		}
		fresh, err := e.token(ctx)
		return result{fresh, deleted}, err
	})
	r, _ := v.(result)
	return r.fresh, r.deleted, err
}

// Cached reports whether this replica holds a copy of the token it may
// serve, so that Token costs neither a Redis read nor an issuer call. For a
// user's token it never creates the user's state.
func (h *Handle) Cached() bool {
	e := h.e
	if e == nil {
		var ok bool
		if e, ok = h.c.users.Peek(h.user); !ok {
			return false
		}
	}
	return e.mem.valid() != nil
}
