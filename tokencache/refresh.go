package tokencache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// This file is what happens at the issuer: calling it with retries and
// the budget, remembering failures (here and for the fleet), and what a
// caller gets when Redis is down.

// fetch calls the issuer, retrying retryable errors with capped
// exponential backoff and full jitter (or the issuer's Retry-After). Each
// attempt takes its budget first; spent, if not nil, is the first one's,
// already taken (see entry.begin).
func (e *entry) fetch(ctx context.Context, redisDown bool, spent *protocol.Budget) (Token, error) {
	for attempt := 1; ; attempt++ {
		var err error
		switch {
		case attempt == 1 && spent != nil && spent.Uncountable:
			// Redis could not count it (say, a key of another type at
			// the budget key): asking again would fail the same way.
			e.c.stats.redisErrors.Add(1)
			e.c.log().Warn("tokencache: issuer budget could not be counted in redis; keeping to it in this process", "key", e.c.budget.key)
			err = e.c.takeBudget(ctx, true)
		case attempt == 1 && spent != nil:
			err = e.c.spent(*spent)
		default:
			err = e.c.takeBudget(ctx, redisDown)
		}
		tok := Token{}
		if err == nil {
			e.c.stats.issuerCalls.Add(1)
			tok, err = e.callFetcher(ctx)
		}
		if err == nil {
			if err = e.check(tok); err == nil {
				return tok, nil
			}
		}
		e.c.stats.issuerErrors.Add(1)
		if !isRetryable(err) || attempt >= e.c.cfg.maxAttempts || ctx.Err() != nil {
			return Token{}, err
		}
		d := backoff(attempt, e.c.cfg.backoffBase, e.c.cfg.backoffMax)
		if ra := retryAfter(err); ra > d {
			d = min(ra, e.c.cfg.backoffMax)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return Token{}, err
		}
		e.c.log().Info("tokencache: issuer call failed; retrying", "key", e.k.Token, "attempt", attempt, "delay", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return Token{}, err
		case <-t.C:
		}
	}
}

// callFetcher calls the Fetcher, turning a panic into an error: a broken
// issuer response must not take the process down.
func (e *entry) callFetcher(ctx context.Context) (tok Token, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("tokencache: fetcher panicked: %v", p)
		}
	}()
	return e.f.Fetch(ctx)
}

// check rejects tokens the cache cannot share.
func (e *entry) check(tok Token) error {
	now := e.c.now()
	switch {
	case tok.AccessToken == "":
		return fmt.Errorf("%w: empty access token", ErrInvalidToken)
	case tok.Expiry.IsZero():
		return fmt.Errorf("%w: no expiry", ErrInvalidToken)
	case e.ttlFor(tok, now) < time.Millisecond:
		return fmt.Errorf("%w: expires at %s, already past", ErrInvalidToken, tok.Expiry.UTC().Format(time.RFC3339))
	}
	return nil
}

// fetchFailed turns a Fetcher error into a *FetchError and remembers it for
// its back-off window (failureWindow). If publish, it tells the fleet
// through a "failed" event, so its waiters return at once, and through
// the failure key, so replicas that ask later (and those that hear an
// event naming no credential) do too.
func (e *entry) fetchFailed(ctx context.Context, err error, publish bool) *FetchError {
	fe := &FetchError{Code: errorCode(err), Retryable: isRetryable(err), Message: truncate(err.Error(), 300), Err: err}
	window := e.failureWindow(fe, err)
	if window > 0 {
		fe.Until = e.c.now().Add(window)
	}
	e.recordFailure(fe)
	e.c.log().Error("tokencache: refresh failed", "key", e.k.Token, "code", fe.Code, "retryable", fe.Retryable, "retry_in", window, "err", err)
	if publish {
		// The fleet learns it twice: waiters now, through the event, and
		// replicas that ask later (or start later), through the failure
		// key, which lives as long as the window.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.c.cfg.lockTTL)
		defer cancel()
		if window > 0 {
			f := failure{Code: fe.Code, Message: fe.Message, Retryable: fe.Retryable, By: e.c.cfg.host,
				Fingerprint: e.credFP, Streak: e.failStreak.Load()}
			if rerr := e.c.st.remember(pctx, e.k, f, window); rerr != nil {
				e.c.log().Warn("tokencache: could not record the failure", "key", e.k.Failed, "err", rerr)
			}
		}
		ev := protocol.Event{Type: protocol.EventFailed, Key: e.k.Token, Code: fe.Code, Message: fe.Message, Retryable: fe.Retryable,
			RetryInMS: window.Milliseconds(), By: e.c.cfg.host, Origin: e.c.origin, Credential: e.eventCredential()}
		if perr := e.c.st.publish(pctx, e.k.Channel, ev); perr != nil {
			e.c.log().Warn("tokencache: could not publish the failure", "key", e.k.Token, "err", perr)
		}
	}
	return fe
}

// maxRetryWindow caps how long the fleet waits after failed refreshes of
// a retryable kind before calling the issuer again.
const maxRetryWindow = 30 * time.Second

// failureWindow is how long nobody calls the issuer after this failure: the
// negative TTL for a permanent error; for a retryable one, a back-off that
// starts at the retry cap (each refresh has already retried with backoff)
// and doubles with each refresh in a row that failed (so callers that keep asking
// do not turn an outage into a stream of calls), or the issuer's
// Retry-After if longer, capped at maxRetryWindow.
func (e *entry) failureWindow(fe *FetchError, err error) time.Duration {
	if !fe.Retryable {
		return e.c.cfg.negativeTTL
	}
	streak := e.failStreak.Add(1)
	d := jitter(min(maxRetryWindow, e.c.cfg.backoffMax<<min(streak-1, 16)))
	return min(maxRetryWindow, max(d, retryAfter(err)))
}

// adoptFailure takes on a failure the fleet recorded in Redis, unless
// one is already remembered here, and the fleet's count of failed
// refreshes in a row, so the back-off grows whoever refreshes next.
func (e *entry) adoptFailure(fe *FetchError, streak int32) {
	for cur := e.failStreak.Load(); streak > cur && !e.failStreak.CompareAndSwap(cur, streak); cur = e.failStreak.Load() {
	}
	e.failMu.Lock()
	cur := e.fail
	e.failMu.Unlock()
	if cur != nil && e.c.now().Before(cur.Until) {
		return // ours is still in its window, and carries the local cause
	}
	e.recordFailure(fe)
}

func (e *entry) recordFailure(fe *FetchError) {
	var gen int64
	if s := e.l1.Load(); s != nil {
		gen = s.gen
	}
	e.failMu.Lock()
	e.fail = fe
	e.failGen = gen
	_, e.failSeq = e.sig.arm()
	e.failMu.Unlock()
	e.sig.fire()
}

// clearFailureBelow forgets the remembered failure once a token newer than
// the one held when it happened is installed: re-reading the token whose
// refresh failed is no reason to call the issuer again.
func (e *entry) clearFailureBelow(gen int64) {
	e.failMu.Lock()
	clear := e.fail != nil && gen > e.failGen
	if clear {
		e.fail = nil
	}
	e.failMu.Unlock()
	if clear {
		e.failStreak.Store(0)
	}
}

func (e *entry) clearFailure() {
	e.failMu.Lock()
	e.fail = nil
	e.failMu.Unlock()
	e.failStreak.Store(0)
}

// failureSince returns a failure recorded after the waiter armed at seq.
func (e *entry) failureSince(seq uint64) *FetchError {
	e.failMu.Lock()
	defer e.failMu.Unlock()
	if e.fail != nil && e.failSeq >= seq {
		return e.fail
	}
	return nil
}

// negative returns a remembered failure still in its window: no issuer
// call until it ends.
func (e *entry) negative() error {
	e.failMu.Lock()
	defer e.failMu.Unlock()
	if f := e.fail; f != nil && !f.Until.IsZero() && e.c.now().Before(f.Until) {
		return f
	}
	return nil
}

// redisDown decides what a caller with no token in memory gets when Redis
// fails: under fail-open, a token fetched directly (one call per process,
// this runs inside the singleflight) and written back later.
func (e *entry) redisDown(ctx context.Context, rerr error) (Token, error) {
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
	if err := e.negative(); err != nil {
		return Token{}, err
	}
	e.c.stats.failOpen.Add(1)
	e.c.log().Warn("tokencache: redis unavailable; fetching from the issuer directly", "key", e.k.Token, "err", rerr)
	tok, err := e.fetch(ctx, true, nil)
	if err != nil {
		if e.c.ctx.Err() != nil {
			return Token{}, ErrClosed
		}
		return Token{}, e.fetchFailed(ctx, err, false)
	}
	e.unreject(tok.Fingerprint())
	issued := e.c.now()
	ttl := e.ttlFor(tok, issued)
	rec := newRecord(tok, 0, issued, ttl, e.c.cfg.host, e.credFP)
	s := e.snapshotFor(rec, ttl, issued)
	s.softUntil = min(s.validUntil, e.c.monoAt(issued)+mono(jitter(e.c.cfg.waitRecheck)))
	e.pending.Store(&tok)
	if e.c.cfg.l1 {
		e.l1.Store(s)
	}
	return tok, nil
}

// writeBack stores a token fetched while Redis was down, unless the fleet
// has stored one meanwhile, which then replaces ours. It reports whether
// Redis was reachable.
func (e *entry) writeBack(ctx context.Context, tok *Token) bool {
	issued := e.c.now()
	if !tok.Valid(issued) {
		e.pending.CompareAndSwap(tok, nil)
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
	r, err := e.read(ctx, issued)
	if err != nil {
		return false
	}
	e.pending.CompareAndSwap(tok, nil)
	if r.found {
		e.install(e.snapshotFor(r.rec, r.pttl, issued))
		return true
	}
	gen, _, err := e.begin(ctx, lease, e.floor(r), false, false)
	if err != nil || gen < 0 {
		return err == nil
	}
	ttl := e.ttlFor(*tok, issued)
	rec := newRecord(*tok, gen, issued, ttl, e.c.cfg.host, e.credFP)
	if w, err := e.write(ctx, lease, &rec, ttl, true); err != nil {
		e.pending.CompareAndSwap(nil, tok)
		return false
	} else if w.Stored {
		e.c.log().Info("tokencache: wrote back a token fetched while redis was down", "key", e.k.Token, "generation", rec.Generation)
		rec.StoredMS = w.StoredMS
		e.install(e.snapshotFor(rec, ttl, issued))
	}
	return true
}

// isRetryable: only an error that says so is permanent. Timeouts,
// cancellations and unknown errors are worth another try later.
func isRetryable(err error) bool {
	var r interface{ Retryable() bool }
	if errors.As(err, &r) {
		return r.Retryable()
	}
	return true
}

func retryAfter(err error) time.Duration {
	var r interface{ RetryAfter() time.Duration }
	if errors.As(err, &r) {
		return r.RetryAfter()
	}
	return 0
}

func errorCode(err error) string {
	var c interface{ ErrorCode() string }
	if errors.As(err, &c) && c.ErrorCode() != "" {
		return c.ErrorCode()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, ErrInvalidToken):
		return "invalid-token"
	}
	return "fetch-error"
}

// backoff is capped exponential backoff with full jitter.
func backoff(attempt int, base, max time.Duration) time.Duration {
	d := base << (attempt - 1)
	if d > max || d <= 0 {
		d = max
	}
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

// jitter spreads d by ±25%.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d*3/4 + time.Duration(rand.Int64N(int64(d)/2+1))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
