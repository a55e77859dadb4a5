package tokencache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// This file is the refresh under the lock, and the one fenced write path
// every token the issuer returns goes through. A refresh (a caller's, a
// cron Refresh, or refresh-ahead) re-checks Redis under the lock, draws
// the lease's fencing generation (begin), calls the issuer, and stores the
// token fenced by that generation (write), publishing "refreshed". A
// token fetched while Redis was down (redisDown) is written back later
// through the same begin and write under the lock (writeBack).

// refresher refreshes one entry's token under the lock.
type refresher struct {
	e *entry
}

// locked runs with the lock held: re-check Redis, call the issuer, write
// the token fenced by the lease's generation, release. done, if not nil,
// says whether a token found on the re-check makes the refresh
// unnecessary; nil means any usable token does.
func (rf *refresher) locked(ctx context.Context, lease *lock.Lease, ahead bool, done func(readResult) bool) (tok Token, err error) {
	e := rf.e
	ctx, end := e.observe(ctx, OpRefresh)
	defer func() { end(e.outcome(tok, err)) }()
	defer func() {
		if err := lease.Release(ctx); err != nil {
			e.c.log().Warn("tokencache: lock released late", "key", e.k.Lock, "err", err)
		}
	}()
	// redisDown is for callers with nothing to serve. A refresh ahead
	// (ahead: this replica serves a valid copy meanwhile) that loses Redis
	// gives up and tries again later, without an issuer call outside the
	// lock.
	redisDown := func(err error) (Token, error) {
		if ahead {
			return Token{}, err
		}
		return rf.redisDown(ctx, err)
	}
	r, err := e.read(ctx)
	if err != nil {
		return redisDown(err)
	}
	if !r.found && !ahead {
		// A caller with no copy: no read that started before this one may
		// install what Redis no longer holds. (A refresh ahead keeps
		// serving its valid copy: should the refresh fail, an evicted
		// token is still better than none.)
		e.mem.absentAt(r.ticket)
	} else if r.found && (done == nil || done(r)) {
		if s, ok := e.validSnapshot(r); ok {
			if e.install(s) {
				return s.tok, nil
			}
			if v := e.mem.valid(); v != nil && v.newer(s) {
				return v.tok, nil // an event brought a newer one meanwhile
			}
		}
		// Past its expiry on this clock, or Redis has since answered
		// that it holds none: refresh it.
		r.found = false
	}
	if ahead {
		// The re-read may have brought the fleet's last failure: a refresh
		// ahead waits out its window whether or not a token is stored.
		if err := e.fails.negative(); err != nil {
			return Token{}, err
		}
	}
	// A refresh ahead (the fleet still has a valid token) tells the fleet
	// one refresh is under way, so nobody else needs to try.
	gen, spent, err := rf.begin(ctx, lease, e.mem.floor(r.rec.Generation), true, r.found)
	if err != nil {
		e.c.stats.redisErrors.Add(1)
		return redisDown(err)
	} else if gen < 0 {
		return Token{}, fmt.Errorf("%w: the refresh lock's lease ended before the refresh began", ErrUnavailable)
	}
	// The issuer call stops when the lease is lost (its owner was paused
	// past it, or Redis lost it): another replica may be refreshing by
	// now, and whatever this call returned would be fenced out anyway.
	fctx, stop := leaseContext(ctx, lease)
	tok, err = e.iss.fetch(fctx, false, spent)
	stop()
	if err != nil && errors.Is(lease.Err(), lock.ErrLeaseLost) && ctx.Err() == nil {
		return Token{}, errLeaseTaken
	}
	if err != nil {
		switch {
		case e.c.ctx.Err() != nil:
			return Token{}, ErrClosed // shutting down is not the issuer's failure
		case ctx.Err() != nil:
			// The caller (a cron Refresh) or the refresh's own bound gave
			// up: not the issuer's verdict, so the fleet is not told.
			return Token{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		// The fleet learns of it (its event, and its failure key, which
		// the other replicas check a credential-less event against).
		return Token{}, e.iss.failed(ctx, err, true)
	}
	// The issuer's latest answer is authoritative: a token invalidated
	// here that it hands out again is served again.
	e.mem.unreject(tok.Fingerprint())
	issued := e.c.now()
	rec, ttl := rf.record(tok, gen, issued)
	w, err := rf.write(ctx, lease, &rec, ttl, !r.found)
	for err != nil && e.settle(ctx, err) {
		// A cluster slot is moving: the lease holds; store the token once
		// it has moved, so the fleet needs no other issuer call.
		e.c.stats.redisErrors.Add(1)
		w, err = rf.write(ctx, lease, &rec, ttl, !r.found)
	}
	if err != nil {
		// The token is good; Redis is not. Serve it and write it back later.
		e.c.stats.redisErrors.Add(1)
		e.c.log().Warn("tokencache: could not store the new token; serving it from memory", "key", e.k.Token, "err", err)
		e.mem.setPending(&tok)
		s := e.stored(rec, ttl, issued)
		s.softUntil = min(s.validUntil, e.c.monoAt(issued)+mono(jitter(e.c.cfg.waitRecheck)))
		e.install(s)
		return tok, nil
	}
	if !w.Stored {
		// Fenced out: our lease expired and a newer holder exists, or a
		// newer token is stored. Prefer the fleet's token.
		e.c.stats.fenced.Add(1)
		e.c.log().Warn("tokencache: write rejected by fencing; a newer lease or token exists", "key", e.k.Token,
			"generation", gen, "fenced_by", w.FencedBy, "lease_lost", w.LeaseLost)
		if tok2, ok, err := e.readAndInstall(ctx); err == nil && ok {
			return tok2, nil
		}
		// Nothing usable is stored yet: our token is still valid, so
		// serve it from memory while the newer holder finishes.
		s := e.stored(rec, ttl, issued)
		s.gen = 0
		e.install(s)
		return tok, nil
	}
	e.c.stats.refreshes.Add(1)
	e.c.log().Info("tokencache: token refreshed", "key", e.k.Token, "generation", rec.Generation, "token", tok)
	rf.installWritten(rec, ttl, issued, w)
	return tok, nil
}

// errLeaseTaken: another owner took the refresh lock during the issuer
// call. Callers wait for its token (see entry.obtain).
var errLeaseTaken = fmt.Errorf("%w: another owner took the refresh lock during the issuer call", ErrUnavailable)

// leaseContext is ctx, cancelled as well when another owner takes the
// lease's lock. A lease that merely expired (the watchdog could not reach
// Redis, say during a failover) goes on: nobody else is refreshing, and
// the write is fenced anyway. Cancel it when done: that also ends its
// watching goroutine.
func leaseContext(ctx context.Context, lease *lock.Lease) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-lease.Lost():
			if errors.Is(lease.Err(), lock.ErrLeaseLost) {
				cancel()
			}
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// The fenced write path, shared by the refresh (a caller's, a cron
// Refresh's, refresh-ahead's: all go through locked) and the write-back:
// begin draws the generation under the lease, record makes the value,
// write stores it fenced, installWritten serves what was stored.

// begin draws the lease's fencing generation once the holder has decided
// to write (lifted past the stored token's if the counter fell behind it:
// evicted, or lost in a failover). In the same round trip it counts the
// first issuer call in the budget, if call and the budget key shares the
// token's slot (spent is then the budget's reply), and, if ahead (the
// fleet still has a valid token), announces "refreshing". A negative
// generation means the lease was lost meanwhile.
func (rf *refresher) begin(ctx context.Context, lease *lock.Lease, floor int64, call, ahead bool) (gen int64, spent *protocol.Budget, err error) {
	e := rf.e
	var b *budget
	if call && e.k.NSSlot {
		b = e.c.budgetFor(e.k)
	}
	var ev *protocol.Event
	if ahead {
		ev = &protocol.Event{Type: protocol.EventRefreshing, Key: e.k.Token, By: e.c.cfg.host, Origin: e.c.origin, Credential: e.cred.forEvent()}
	}
	var res protocol.BeginResult
	gen, err = lease.FenceWith(ctx, func(ctx context.Context) (int64, error) {
		res, err = e.c.st.begin(ctx, e.k, lease.Value(), floor, b, ev)
		if err == nil && res.LeaseLost {
			err = lock.ErrLeaseLost // another owner holds the lock
		}
		return res.Generation, err
	})
	spent = res.Budget
	if errors.Is(err, lock.ErrLeaseLost) || errors.Is(err, lock.ErrLeaseExpired) {
		return -1, nil, nil
	}
	if err == nil && res.Pending() {
		// Where the script could not publish (a user's token in a
		// cluster, or the pub/sub mode unknown yet), the announcement
		// costs a round trip of its own, bounded tightly: a lost one costs
		// only the reads and lock attempts it would have saved.
		actx, cancel := context.WithTimeout(ctx, announceTimeout)
		res.Finish(actx)
		cancel()
	}
	return gen, spent, err
}

// announceTimeout bounds a "refreshing" announcement sent on its own.
const announceTimeout = 250 * time.Millisecond

// record is the value that stores tok, issued at the local time issued,
// under generation gen, and the key TTL it is stored with.
func (rf *refresher) record(tok Token, gen int64, issued time.Time) (record, time.Duration) {
	e := rf.e
	ttl := e.c.cfg.ttlFor(tok, issued)
	return newRecord(tok, gen, issued, ttl, e.c.cfg.host, e.cred.fingerprint()), ttl
}

// write stores rec with its fencing generation under lease and publishes
// "refreshed". If lift is set (the holder found no usable token when it
// re-checked) and the stored value claims a generation at or above ours
// without the fence to back it (a hand edit, or a value written before the
// fence was lost), the fence is lifted past it and the write tried once
// more: garbage must not block writes forever.
func (rf *refresher) write(ctx context.Context, lease *lock.Lease, rec *record, ttl time.Duration, lift bool) (writeResult, error) {
	e := rf.e
	for attempt := 0; ; attempt++ {
		stored, err := rf.seal(*rec)
		if err != nil {
			return writeResult{}, err
		}
		ev := protocol.Event{Type: protocol.EventRefreshed, Key: e.k.Token, Generation: rec.Generation, By: e.c.cfg.host, Origin: e.c.origin, TokenFP: rec.TokenFP}
		ev.ExpiresAt, _ = rec.Expiry()
		wctx, end := e.observe(ctx, OpWrite)
		w, err := e.c.st.write(wctx, e.k, stored, ttl, ev, lease.Value())
		end(writeOutcome(w, err, rec.Generation))
		if err != nil || !w.Stale || !lift || attempt > 0 {
			return w, err
		}
		r, err := e.c.st.raiseFence(ctx, e.k, rec.Generation, w.FencedBy+1, ttl)
		if err != nil || !r.Raised {
			return writeResult{}, err
		}
		rec.Generation = r.Generation
	}
}

// seal returns rec as it is stored: with the token encrypted when the cache
// has a key ring.
func (rf *refresher) seal(rec record) (record, error) {
	kr := rf.e.c.cfg.keyring
	if kr == nil {
		return rec, nil
	}
	id, sealed, err := kr.seal(rf.e.k.Token, rec)
	if err != nil {
		return rec, fmt.Errorf("tokencache: encrypting the token: %w", err)
	}
	rec.AccessToken, rec.Ciphertext, rec.KeyID, rec.Seal = "", sealed, id, sealVersion
	return rec, nil
}

// installWritten makes rec, stored by w, the in-memory copy.
func (rf *refresher) installWritten(rec record, ttl time.Duration, issued time.Time, w writeResult) {
	rec.StoredMS = w.StoredMS
	rf.e.install(rf.e.stored(rec, ttl, issued))
}

// redisDown decides what a caller with no token in memory gets when Redis
// fails: under fail-open, a token fetched directly (one call per process,
// this runs inside the singleflight) and written back later.
func (rf *refresher) redisDown(ctx context.Context, rerr error) (Token, error) {
	e := rf.e
	if errors.Is(rerr, ErrDecrypt) {
		return Token{}, rerr // Redis is fine; this replica's keys are not
	}
	if isTransient(rerr) {
		// Redis answered (a cluster slot moving): callers wait and
		// re-check (settle) rather than fetch around the fleet.
		return Token{}, fmt.Errorf("%w: %w", ErrUnavailable, rerr)
	}
	if !e.c.cfg.failOpen {
		return Token{}, fmt.Errorf("%w: %w", ErrRedisUnavailable, rerr)
	}
	if err := e.fails.negative(); err != nil {
		return Token{}, err
	}
	e.c.stats.failOpen.Add(1)
	e.c.log().Warn("tokencache: redis unavailable; fetching from the issuer directly", "key", e.k.Token, "err", rerr)
	tok, err := e.iss.fetch(ctx, true, nil)
	if err != nil {
		if e.c.ctx.Err() != nil {
			return Token{}, ErrClosed
		}
		return Token{}, e.iss.failed(ctx, err, false)
	}
	e.mem.unreject(tok.Fingerprint())
	issued := e.c.now()
	rec, ttl := rf.record(tok, 0, issued)
	s := e.snapshotFor(rec, ttl, issued, e.c.now())
	s.softUntil = min(s.validUntil, e.c.monoAt(issued)+mono(jitter(e.c.cfg.waitRecheck)))
	e.mem.setPending(&tok)
	e.mem.set(s)
	return tok, nil
}

// writeBack stores a token fetched while Redis was down, unless the fleet
// has stored one meanwhile, which then replaces ours. It reports whether
// Redis was reachable.
func (rf *refresher) writeBack(ctx context.Context, tok *Token) bool {
	e := rf.e
	issued := e.c.now()
	if !tok.Valid(issued) {
		e.mem.swapPending(tok, nil)
		return true
	}
	lease, err := e.c.locker.TryAcquire(ctx, e.k.Lock)
	if errors.Is(err, lock.ErrNotAcquired) {
		return true // someone is refreshing; their token will do
	}
	if err != nil {
		return false
	}
	defer func() { _ = lease.Release(ctx) }()
	r, err := e.read(ctx)
	if err != nil {
		return false
	}
	e.mem.swapPending(tok, nil)
	if r.found {
		if s, ok := e.validSnapshot(r); ok {
			e.install(s)
		}
		return true
	}
	gen, _, err := rf.begin(ctx, lease, e.mem.floor(r.rec.Generation), false, false)
	if err != nil || gen < 0 {
		return err == nil
	}
	rec, ttl := rf.record(*tok, gen, issued)
	if w, err := rf.write(ctx, lease, &rec, ttl, true); err != nil {
		e.mem.swapPending(nil, tok)
		return false
	} else if w.Stored {
		e.c.log().Info("tokencache: wrote back a token fetched while redis was down", "key", e.k.Token, "generation", rec.Generation)
		rf.installWritten(rec, ttl, issued, w)
	}
	return true
}
