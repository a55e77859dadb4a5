package tokencache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// This file is what happens at the issuer: calling one token's Fetcher
// with retries and the budget, checking what it returned, turning a
// failure into a *FetchError the fleet hears of, and the skew a token's
// life is cut by.

// issuer calls one entry's Fetcher.
type issuer struct {
	c     *Cache
	k     keys
	f     Fetcher
	cred  *credential
	fails *failures
}

// fetch calls the issuer, retrying retryable errors with capped
// exponential backoff and full jitter (or the issuer's Retry-After). Each
// attempt takes its budget first; spent, if not nil, is the first one's,
// already taken (see refresher.begin).
func (is *issuer) fetch(ctx context.Context, redisDown bool, spent *protocol.Budget) (Token, error) {
	c := is.c
	for attempt := 1; ; attempt++ {
		var err error
		switch {
		case attempt == 1 && spent != nil && spent.Uncountable:
			// Redis could not count it (say, a key of another type at
			// the budget key): asking again would fail the same way.
			c.stats.redisErrors.Add(1)
			c.log().Warn("tokencache: issuer budget could not be counted in redis; keeping to it in this process", "key", c.budget.key)
			err = c.takeBudget(ctx, is.k, true)
		case attempt == 1 && spent != nil:
			err = c.spent(*spent)
		default:
			err = c.takeBudget(ctx, is.k, redisDown)
		}
		tok := Token{}
		if err == nil {
			c.stats.issuerCalls.Add(1)
			tok, err = is.call(ctx)
		}
		if err == nil {
			if err = is.check(tok); err == nil {
				return tok, nil
			}
		}
		c.stats.issuerErrors.Add(1)
		if !isRetryable(err) || attempt >= c.cfg.maxAttempts || ctx.Err() != nil {
			return Token{}, err
		}
		d := backoff(attempt, c.cfg.backoffBase, c.cfg.backoffMax)
		if ra := retryAfter(err); ra > d {
			d = min(ra, c.cfg.backoffMax)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return Token{}, err
		}
		c.log().Info("tokencache: issuer call failed; retrying", "key", is.k.Token, "attempt", attempt, "delay", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return Token{}, err
		case <-t.C:
		}
	}
}

// call calls the Fetcher, turning a panic into an error: a broken
// issuer response must not take the process down.
func (is *issuer) call(ctx context.Context) (tok Token, err error) {
	ctx, end := is.c.observe(ctx, OpIssuerCall, is.k)
	defer func() { end(issuerOutcome(err)) }() // after the recover below
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("tokencache: fetcher panicked: %v", p)
		}
	}()
	return is.f.Fetch(ctx)
}

// check rejects tokens the cache cannot share.
func (is *issuer) check(tok Token) error {
	now := is.c.now()
	switch {
	case tok.AccessToken == "":
		return fmt.Errorf("%w: empty access token", ErrInvalidToken)
	case tok.Expiry.IsZero():
		return fmt.Errorf("%w: no expiry", ErrInvalidToken)
	case is.c.cfg.ttlFor(tok, now) < time.Millisecond:
		return fmt.Errorf("%w: expires at %s, already past", ErrInvalidToken, tok.Expiry.UTC().Format(time.RFC3339))
	}
	return nil
}

// failed turns a Fetcher error into a *FetchError and remembers it for
// its back-off window (failures.window). If publish, it tells the fleet
// through a "failed" event, so its waiters return at once, and through
// the failure key, so replicas that ask later (and those that hear an
// event naming no credential) do too.
func (is *issuer) failed(ctx context.Context, err error, publish bool) *FetchError {
	c := is.c
	fe := &FetchError{Code: errorCode(err), Retryable: isRetryable(err), Message: truncate(err.Error(), 300), Err: err}
	window, streak := is.fails.window(fe, err)
	if window > 0 {
		fe.Until = c.now().Add(window)
	}
	is.fails.record(fe)
	c.log().Error("tokencache: refresh failed", "key", is.k.Token, "code", fe.Code, "retryable", fe.Retryable, "retry_in", window, "err", err)
	if publish {
		// The fleet learns it twice: waiters now, through the event, and
		// replicas that ask later (or start later), through the failure
		// key, which lives as long as the window.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.lockTTL)
		defer cancel()
		if window > 0 {
			f := failure{Code: fe.Code, Message: fe.Message, Retryable: fe.Retryable, By: c.cfg.host,
				Fingerprint: is.cred.fingerprint(), Streak: streak}
			if rerr := c.st.remember(pctx, is.k, f, window); rerr != nil {
				c.log().Warn("tokencache: could not record the failure", "key", is.k.Failed, "err", rerr)
			}
		}
		ev := protocol.Event{Type: protocol.EventFailed, Key: is.k.Token, Code: fe.Code, Message: fe.Message, Retryable: fe.Retryable,
			RetryInMS: window.Milliseconds(), By: c.cfg.host, Origin: c.origin, Credential: is.cred.forEvent()}
		if perr := c.st.publish(pctx, is.k.Channel, ev); perr != nil {
			c.log().Warn("tokencache: could not publish the failure", "key", is.k.Token, "err", perr)
		}
	}
	return fe
}

// ttlFor is the key TTL for tok: its remaining life minus the skew, the
// skew capped at a fifth of the life.
func (cfg *config) ttlFor(tok Token, now time.Time) time.Duration {
	life := tok.Expiry.Sub(now)
	return life - cfg.skewFor(life)
}

// skewFor is the skew taken off a token that lives life: WithSkew's,
// capped at a fifth of the life.
func (cfg *config) skewFor(life time.Duration) time.Duration {
	return min(cfg.skew, life/5)
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
