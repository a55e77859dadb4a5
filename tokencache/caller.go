package tokencache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokencache/tokencache/lock"
)

// This file is a caller's path to the token: the copy in memory (token),
// else one shared flight per token (slow) that reads Redis, takes the
// lock and refreshes, or waits for the replica that holds it (obtain).

// token is the hot path: the copy in memory, one atomic load, while it is
// valid (starting the background work once it is past its next moment);
// else the slow path.
func (e *entry) token(ctx context.Context) (Token, error) {
	if s := e.mem.l1.Load(); s != nil {
		now := e.c.monoNow()
		if now < s.next {
			if !e.sched.used.Load() {
				e.sched.used.Store(true)
			}
			return s.tok, nil
		}
		if now < s.validUntil {
			e.sched.kick()
			return s.tok, nil
		}
	}
	return e.slow(ctx)
}

// slow gets the token for a caller with no valid copy in memory: every
// caller of this token joins one shared flight (obtain).
func (e *entry) slow(ctx context.Context) (Token, error) {
	if e.c.closed.Load() {
		return Token{}, ErrClosed
	}
	e.sched.used.Store(true)
	// The shared work runs on the cache's context, not the first
	// caller's: a caller that gives up does not fail the others.
	shared := func() (any, error) {
		if !e.c.begin() {
			return Token{}, ErrClosed
		}
		defer e.c.wg.Done()
		rctx, cancel := e.c.flightContext(ctx)
		defer cancel()
		return e.obtain(rctx)
	}
	for attempt := 0; ; attempt++ {
		var tok Token
		if ctx.Done() == nil {
			// A caller that cannot give up runs the work itself (or
			// joins it): no goroutine hand-off.
			v, err, _ := e.c.sf.Do(e.k.Token, shared)
			if err != nil {
				return Token{}, err
			}
			tok = v.(Token)
		} else {
			select {
			case r := <-e.c.sf.DoChan(e.k.Token, shared):
				if r.Err != nil {
					return Token{}, r.Err
				}
				tok = r.Val.(Token)
			case <-ctx.Done():
				return Token{}, ctx.Err()
			}
		}
		if attempt < 2 && e.mem.servedRejected(tok) {
			// We joined a flight that read the token before it was
			// invalidated here: ask again.
			continue
		}
		return tok, nil
	}
}

// obtain gets a valid token when there is none in memory: Redis, then the
// lock, then waiting for whoever holds it.
func (e *entry) obtain(ctx context.Context) (Token, error) {
	for recheck := false; ; {
		tok, ok, err := e.readAndInstall(ctx)
		if err != nil {
			return e.unread(ctx, err)
		}
		if ok {
			if recheck {
				// The re-check, not the holder's event, found the token.
				e.c.sub.suspectSubscription()
			}
			e.c.stats.redisHits.Add(1)
			return tok, nil
		}
		// Subscribe first, then re-check: a "refreshed" published between
		// the two reads cannot be missed.
		e.c.sub.waitSubscribed(ctx, subscribeWait)
		wake, seq := e.sig.arm()
		if tok, ok, err = e.readAndInstall(ctx); err != nil {
			return e.unread(ctx, err)
		} else if ok {
			return tok, nil
		}
		if err := e.fails.negative(); err != nil {
			return Token{}, err
		}

		lctx, end := e.observe(ctx, OpLock)
		lease, err := e.c.locker.TryAcquire(lctx, e.k.Lock)
		end(lockOutcome(err))
		switch {
		case err == nil:
			tok, err := e.rf.refresh(ctx, lease, forCaller, nil)
			if !errors.Is(err, errLeaseTaken) {
				return tok, err
			}
			// Another owner took the lock from under us (we were paused
			// past our lease): its token is on the way; wait for it.
		case errors.Is(err, lock.ErrNotAcquired):
			e.c.stats.lockContended.Add(1)
		case ctx.Err() != nil:
			return Token{}, e.c.ctxErr(ctx)
		default:
			// Redis answered the read just before: a failed lock attempt
			// (a slow Redis, a timeout) is a reason to wait and look
			// again, not to call the issuer from every replica.
			e.c.stats.redisErrors.Add(1)
			e.c.log().Warn("tokencache: lock attempt failed; waiting and re-checking", "key", e.k.Lock, "err", err)
		}

		// Another replica is refreshing: wait for its event, bounded by a
		// jittered re-check so a lost message costs one interval.
		e.c.stats.waits.Add(1)
		_, endWait := e.observe(ctx, OpWait)
		t := time.NewTimer(jitter(e.c.cfg.waitRecheck))
		recheck = false
		select {
		case <-wake:
		case <-t.C:
			recheck = true
		case <-ctx.Done():
			t.Stop()
			endWait(Outcome{Result: ResultCanceled})
			return Token{}, e.c.ctxErr(ctx)
		}
		t.Stop()
		endWait(waitOutcome(recheck))
		if s := e.mem.valid(); s != nil {
			return s.tok, nil
		}
		if fe := e.fails.since(seq); fe != nil {
			return Token{}, fe
		}
	}
}

// unread is what a caller with nothing to serve gets when Redis could not
// be read: the *KeyError of a token this replica cannot open, else what
// redisDown decides.
func (e *entry) unread(ctx context.Context, err error) (Token, error) {
	if errors.Is(err, ErrDecrypt) {
		return Token{}, err // Redis is fine; this replica's keys are not
	}
	return e.rf.redisDown(ctx, err)
}

// ctxErr is what a caller whose ctx ended while it waited gets: ErrClosed
// if the cache closed, else ErrUnavailable with the context's error.
func (c *Cache) ctxErr(ctx context.Context) error {
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	return fmt.Errorf("%w within %v (%w)", ErrUnavailable, c.cfg.refreshTimeout, ctx.Err())
}
