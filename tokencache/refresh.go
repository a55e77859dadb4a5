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

// why is who asked for a refresh under the lock: it decides what each
// outcome gives them (see refresher.refresh).
type why uint8

const (
	// forCaller: a caller with no valid token in memory (entry.obtain);
	// nothing to serve without one.
	forCaller why = iota
	// forAhead: refresh-ahead, while this replica serves a valid copy.
	forAhead
	// forCron: a cron job's Refresh (Handle.Refresh), which wants the
	// fleet's token stored.
	forCron
)

// outcome is how a refresh under the lock ended.
type outcome uint8

const (
	// stored: the issuer's token is stored, and served.
	stored outcome = iota
	// foundFresh: the re-check under the lock found a token that makes
	// the refresh unnecessary, now served; or a refresh ahead found the
	// fleet backing off after a failure (err says which).
	foundFresh
	// fenced: the write was refused (a newer lease or token exists); the
	// fleet's token, or until it is stored ours, is served.
	fenced
	// leaseLost: the lease ended before the refresh began, or another
	// owner took the lock during the issuer call (err is errLeaseTaken).
	leaseLost
	// issuerFailed: the issuer call failed (err), or ended with the
	// caller's context or the cache.
	issuerFailed
	// redisDown: Redis failed under the lock (err, the store's); a token
	// the issuer returned is served and written back later (tok set).
	redisDown
	// unreadable: the stored token cannot be opened with this replica's
	// key ring (err, a *KeyError): its keys are wrong, not the token, so
	// nothing overwrites it.
	unreadable
)

// refresh runs a refresh under lease (see locked) for w and returns what
// that caller gets of its outcome (see answer). done is locked's.
func (rf *refresher) refresh(ctx context.Context, lease *lock.Lease, w why, done func(readResult) bool) (tok Token, err error) {
	e := rf.e
	ctx, end := e.observe(ctx, OpRefresh)
	defer func() { end(e.outcome(tok, err)) }()
	tok, out, err := rf.locked(ctx, lease, w == forAhead, done)
	switch answer(w, out, tok.AccessToken != "", err) {
	case serve:
		return tok, nil
	case failOpen:
		return rf.redisDown(ctx, err)
	case waitHolder:
		return Token{}, errLeaseTaken
	}
	return Token{}, err
}

// A verdict is what a caller gets of a refresh's outcome.
type verdict uint8

const (
	serve      verdict = iota // the token the refresh ended with
	fail                      // the refresh's error
	failOpen                  // what refresher.redisDown decides (fail open, or closed)
	waitHolder                // errLeaseTaken: a caller waits for the lock's new owner
)

// answer is the one place that maps a refresh's outcome, for w, to what
// its caller gets; hasTok: the refresh ended with a token to serve.
func answer(w why, out outcome, hasTok bool, err error) verdict {
	switch out {
	case stored, fenced:
		return serve
	case foundFresh:
		if err != nil {
			return fail // a refresh ahead found the fleet backing off
		}
		return serve
	case redisDown:
		switch {
		case hasTok:
			return serve // the issuer's token, to write back later
		case w == forCaller:
			return failOpen // nothing to serve: as without the lock
		}
		return fail // a refresh ahead keeps its copy; a cron job reports it
	case leaseLost:
		if w == forCaller {
			return waitHolder // the new owner's token is on the way
		}
		return fail
	}
	return fail // issuerFailed, unreadable
}

// locked runs with the lock held: re-check Redis, call the issuer, write
// the token fenced by the lease's generation, release. ahead: this replica
// serves a valid copy meanwhile, so a token Redis no longer holds keeps
// being served should the refresh fail, and a failure the re-check learns
// of from the fleet means waiting out its window. done, if not nil, says
// whether a token found on the re-check makes the refresh unnecessary;
// nil means any usable token does. It does no mapping: refresh does.
func (rf *refresher) locked(ctx context.Context, lease *lock.Lease, ahead bool, done func(readResult) bool) (Token, outcome, error) {
	e := rf.e
	defer func() {
		if err := lease.Release(ctx); err != nil {
			e.c.log().Warn("tokencache: lock released late", "key", e.k.Lock, "err", err)
		}
	}()
	r, err := e.read(ctx)
	if err != nil {
		return Token{}, redisDown, err
	}
	switch {
	case r.kind == readSealed:
		return Token{}, unreadable, r.bad
	case !r.loaded() && !ahead:
		// A caller with no copy: no read that started before this one may
		// install what Redis no longer holds. (A refresh ahead keeps
		// serving its valid copy: should the refresh fail, an evicted
		// token is still better than none.)
		e.mem.absentAt(r.ticket)
	case r.loaded() && (done == nil || done(r)):
		if s, ok := e.validSnapshot(r); ok {
			if e.install(s) {
				return s.tok, foundFresh, nil
			}
			if v := e.mem.valid(); v != nil && v.newer(s) {
				return v.tok, foundFresh, nil // an event brought a newer one meanwhile
			}
		}
		// Past its expiry on this clock, or Redis has since answered
		// that it holds none: refresh it.
		r.kind = readMissing
	}
	if ahead {
		// The re-read may have brought the fleet's last failure: a refresh
		// ahead waits out its window whether or not a token is stored.
		if err := e.fails.negative(); err != nil {
			return Token{}, foundFresh, err
		}
	}
	// A refresh ahead (the fleet still has a valid token) tells the fleet
	// one refresh is under way, so nobody else needs to try.
	gen, spent, err := rf.begin(ctx, lease, e.mem.floor(r.rec.Generation), true, r.loaded())
	if err != nil {
		return Token{}, redisDown, err
	} else if gen < 0 {
		return Token{}, leaseLost, errLeaseTaken
	}
	// The issuer call stops when the lease is lost (its owner was paused
	// past it, or Redis lost it): another replica may be refreshing by
	// now, and whatever this call returned would be fenced out anyway.
	fctx, stop := leaseContext(ctx, lease)
	tok, err := e.iss.fetch(fctx, false, spent)
	stop()
	if err != nil {
		switch {
		case errors.Is(lease.Err(), lock.ErrLeaseLost) && ctx.Err() == nil:
			return Token{}, leaseLost, errLeaseTaken
		case e.c.ctx.Err() != nil:
			return Token{}, issuerFailed, ErrClosed // shutting down is not the issuer's failure
		case ctx.Err() != nil:
			// The caller (a cron Refresh) or the refresh's own bound gave
			// up: not the issuer's verdict, so the fleet is not told.
			return Token{}, issuerFailed, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		// The fleet learns of it (its event, and its failure key, which
		// the other replicas check a credential-less event against).
		return Token{}, issuerFailed, e.iss.failed(ctx, err, true)
	}
	// The issuer's latest answer is authoritative: a token invalidated
	// here that it hands out again is served again.
	e.mem.unreject(tok.Fingerprint())
	issued := e.c.now()
	rec, ttl := rf.record(tok, gen, issued)
	w, err := rf.write(ctx, lease, &rec, ttl, !r.loaded())
	if err != nil {
		// The token is good; Redis is not. Serve it and write it back later.
		e.c.log().Warn("tokencache: could not store the new token; serving it from memory", "key", e.k.Token, "err", err)
		e.mem.setPending(&tok)
		s := e.stored(rec, ttl, issued)
		s.next, s.why = min(s.validUntil, e.c.monoAt(issued)+mono(jitter(e.c.cfg.waitRecheck))), reasonWriteBack
		e.install(s)
		return tok, redisDown, err
	}
	if !w.Stored {
		// Fenced out: our lease expired and a newer holder exists, or a
		// newer token is stored. Prefer the fleet's token.
		e.c.stats.fenced.Add(1)
		e.c.log().Warn("tokencache: write rejected by fencing; a newer lease or token exists", "key", e.k.Token,
			"generation", gen, "fenced_by", w.FencedBy, "lease_lost", w.LeaseLost)
		if tok2, ok, err := e.readAndInstall(ctx); err == nil && ok {
			return tok2, fenced, nil
		}
		// Nothing usable is stored yet: our token is still valid, so
		// serve it from memory while the newer holder finishes.
		s := e.stored(rec, ttl, issued)
		s.gen = 0
		e.install(s)
		return tok, fenced, nil
	}
	e.c.stats.refreshes.Add(1)
	e.c.log().Info("tokencache: token refreshed", "key", e.k.Token, "generation", rec.Generation, "token", tok)
	rf.installWritten(rec, ttl, issued, w)
	return tok, stored, nil
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
	s.next, s.why = min(s.validUntil, e.c.monoAt(issued)+mono(jitter(e.c.cfg.waitRecheck))), reasonWriteBack
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
	if err != nil || r.kind == readSealed {
		return false
	}
	e.mem.swapPending(tok, nil)
	if r.loaded() {
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
