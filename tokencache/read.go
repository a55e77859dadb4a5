package tokencache

import (
	"context"
	"time"
)

// This file is how a token read from Redis becomes the in-memory copy:
// the checks every read makes (garbage, the credential, a rejected token,
// the fleet's last failure, decryption), the copy's moments on this
// replica's clock (snapshotFor), and install, which orders it against the
// copy held and forgets a failure a newer token makes moot.

// readAndInstall reads Redis and, on a usable token, installs it in
// memory. It reports the token and whether there was one; its error is
// the store's (Redis is down) or, for a token this replica cannot open,
// the *KeyError (ErrDecrypt). An answer of "absent" (any other miss) is
// recorded (memory.absentAt): a read that started before this one cannot
// bring back what Redis no longer holds.
func (e *entry) readAndInstall(ctx context.Context) (Token, bool, error) {
	r, err := e.read(ctx)
	if err != nil {
		return Token{}, false, err
	}
	switch r.kind {
	case readSealed:
		return Token{}, false, r.bad
	case readLoaded:
	default:
		e.mem.absentAt(r.ticket)
		return Token{}, false, nil
	}
	s, ok := e.validSnapshot(r)
	if !ok || !e.install(s) {
		return Token{}, false, nil
	}
	if s.due(e.c.monoAt(r.arrived)) {
		e.sched.kick()
	}
	return s.tok, true, nil
}

// read wraps store.read with the checks every reader makes: counting,
// logging garbage, the token invalidated here, the fleet's last failure,
// the credential fingerprint and decryption, each a kind of result (see
// readKind). Its only error is the store's: Redis did not answer. The
// result carries the read's ticket and when it was sent and answered.
func (e *entry) read(ctx context.Context) (readResult, error) {
	e.c.stats.redisReads.Add(1)
	ticket := e.mem.ticket()
	at := e.c.now()
	octx, end := e.observe(ctx, OpRedisRead)
	r, err := e.c.st.read(octx, e.k.Token, at)
	end(readOutcome(r, err))
	if err != nil {
		return r, err
	}
	r.ticket, r.sent, r.arrived = ticket, at, e.c.now()
	if r.kind == readGarbage {
		e.c.stats.badValues.Add(1)
		e.c.log().Warn("tokencache: unusable value in redis, treating as a miss", "key", e.k.Token, "err", r.bad)
	}
	if r.loaded() && e.mem.isRejected(r.rec.TokenFP, r.rec.Generation) {
		r.kind = readRejected
	}
	if r.failed != nil && r.failed.Code == codeAPIRejected {
		// The fleet's evidence that the API rejects fresh tokens, not a
		// failure of the issuer: Transport weighs it before it
		// invalidates a token (see entry.heldByFleet).
		if e.cred.same(r.failedCred) {
			r.apiRejected = r.failed
		}
		r.failed = nil
	}
	if r.failed != nil && e.cred.same(r.failedCred) {
		if max := at.Add(e.fails.limit(r.failed.Retryable)); r.failed.Until.After(max) {
			r.failed.Until = max
		}
		e.fails.adopt(r.failed, r.failedStreak)
	}
	same, known := e.cred.check(r.rec.Fingerprint)
	if r.loaded() && known && !same && r.rec.Ciphertext != "" {
		// A fingerprint keyed under a key id we hold that does not match:
		// another credential, or this replica's key for that id is wrong.
		// Only the latter fails to open, and is this replica's problem:
		// the token is not overwritten.
		if _, err := e.c.cfg.keyring.open(e.k.Token, r.rec); err != nil {
			e.c.log().Error("tokencache: cannot decrypt the cached token", "key", e.k.Token, "key_id", r.rec.KeyID, "err", err)
			r.kind, r.bad = readSealed, err
			return r, nil
		}
	}
	if r.loaded() && known && !same {
		// Another deployment's token is a miss to refetch and overwrite.
		if e.cred.warned.CompareAndSwap(false, true) {
			e.c.log().Warn("tokencache: cached token was minted for another credential; not serving it",
				"key", e.k.Token, "stored_fingerprint", r.rec.Fingerprint, "our_fingerprint", e.cred.fingerprint())
		}
		r.kind = readForeign
	}
	if r.loaded() && r.rec.Ciphertext != "" {
		tok, err := e.c.cfg.keyring.open(e.k.Token, r.rec)
		if err != nil {
			e.c.log().Error("tokencache: cannot decrypt the cached token", "key", e.k.Token, "key_id", r.rec.KeyID, "err", err)
			r.kind, r.bad = readSealed, err
			return r, nil
		}
		r.rec.AccessToken = tok
	}
	return r, nil
}

// snapshotFor makes the in-memory copy of rec, read with ttl of validity
// left on Redis's clock by a request sent at the local time sent and
// answered at arrived. The copy is served until the earlier of that ttl,
// timed from sent (the safe side: a request that was slow to leave does
// not stretch it), and the value's own expires_at minus the skew on the
// local clock, with maxClockSkew of tolerance for replicas' clocks: a
// replica whose clock is a minute off the writer's neither serves a token
// late nor refreshes one early, and none serves one a Redis clock
// stretched. Its moments (refresh-ahead, the L1 re-check) are timed from
// arrived: a replica paused between the two (a GC, a SIGSTOP, a slow
// reply) does not refresh a token with most of its life left.
// The token's Expiry is the issuer's expiry as this replica's clock sees
// it: the stored expires_at when the two agree within half the skew, else
// the expiry measured on Redis's clock, so that a served token's Expiry is
// always after the local time.
func (e *entry) snapshotFor(rec record, ttl time.Duration, sent, arrived time.Time) *snapshot {
	cfg := &e.c.cfg
	life := rec.Lifetime()
	skew := e.c.cfg.skewFor(life)
	validUntil, measured := e.validity(rec, ttl, sent)
	validOnArrival, _ := e.validity(rec, ttl, arrived)
	tok := recordToken(rec)
	if measured {
		tok.Expiry = e.c.epoch.Add(time.Duration(validUntil) + skew)
	}
	// The issuer's expiry on our clock is the validity's end plus the skew
	// the writer took off; refresh-ahead is a share of the issuer's
	// lifetime, counted back from it as the reply found it.
	due := validOnArrival + mono(skew) - mono(float64(life)*(1-cfg.refreshAhead))
	if cfg.refreshJitter > 0 && due < validUntil {
		// The window never reaches the end of the token's validity: with
		// a high refresh-ahead share some replicas would otherwise draw a
		// moment at the very end, which is no refresh ahead at all.
		window := min(cfg.refreshJitter*float64(life), 0.8*float64(validUntil-due))
		due += mono(e.c.jitterShare(rec.TokenFP) * window)
	}
	due = min(due, validUntil)
	next, why := due, reasonAhead
	if recheck := e.c.monoAt(arrived) + mono(cfg.l1MaxAge); cfg.l1MaxAge > 0 && recheck < due {
		next, why = recheck, reasonRecheck
	}
	return &snapshot{tok: tok, gen: rec.Generation, fp: rec.TokenFP, validUntil: validUntil, dueAt: due, next: next, why: why,
		storedMS: rec.StoredMS, born: e.c.monoAt(tok.Expiry.Add(-life))}
}

// validity is how long a copy of rec, with ttl left on Redis's clock at
// the local time at, may be served, and whether the expiry measured on
// Redis's clock disagrees with the stored one by more than half the skew
// (then the measured one is the token's expiry).
func (e *entry) validity(rec record, ttl time.Duration, at time.Time) (validUntil mono, measured bool) {
	skew := e.c.cfg.skewFor(rec.Lifetime())
	exp, _ := rec.Expiry()
	validUntil = min(e.c.monoAt(at)+mono(ttl), e.c.monoAt(exp.Add(maxClockSkew-skew)))
	if measured := at.Add(ttl + skew); absDuration(measured.Sub(exp)) > skew/2 {
		// The end of validity plus the skew: the measured expiry, or less
		// where the local guard cut the validity short.
		return min(validUntil, e.c.monoAt(measured.Add(-skew))), true
	}
	return min(validUntil, e.c.monoAt(exp.Add(-skew/2))), false
}

// validSnapshot is the copy of what r read, and whether it may still be
// served when the reply arrived: a value Redis's clock calls valid may be
// past its expiry on this one (the local guard of snapshotFor).
func (e *entry) validSnapshot(r readResult) (*snapshot, bool) {
	s := e.snapshotFor(r.rec, r.pttl, r.sent, r.arrived)
	s.ticket = r.ticket
	return s, e.c.monoAt(r.arrived) < s.validUntil
}

// stored is the copy of rec, which this replica stored (or fetched around
// Redis) with ttl at the local time issued. Its ticket is taken now, once
// the write has been answered: a read that started before cannot undo it.
func (e *entry) stored(rec record, ttl time.Duration, issued time.Time) *snapshot {
	s := e.snapshotFor(rec, ttl, issued, e.c.now())
	s.ticket = e.mem.ticket()
	return s
}

// install makes s the in-memory copy (see memory.install) and reports
// whether it is; a token newer than the one held when the last refresh
// failed ends that failure's window.
func (e *entry) install(s *snapshot) bool { return e.mem.install(s) }

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
