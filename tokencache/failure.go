package tokencache

import (
	"sync"
	"sync/atomic"
	"time"
)

// This file is the failure memory of one token: the last refresh that
// failed (here, or anywhere in the fleet through its event or failure
// key), the window in which nobody calls the issuer again, and the count
// of refreshes in a row that failed, which widens that window. Waiters
// learn of a failure through the entry's signal.

// maxRetryWindow caps how long the fleet waits after failed refreshes of
// a retryable kind before calling the issuer again.
const maxRetryWindow = 30 * time.Second

// failures remembers the last failed refresh of one token.
type failures struct {
	mu     sync.Mutex // guards fail, seq, gen
	fail   *FetchError
	seq    uint64       // the signal's sequence when fail was recorded
	gen    int64        // generation held in memory when fail happened
	streak atomic.Int32 // refreshes in a row that failed (retryable)

	sig         *signal          // fired when a failure is recorded
	now         func() time.Time // the cache's clock
	held        func() int64     // the generation held in memory
	negativeTTL time.Duration    // window after a permanent failure (WithNegativeTTL)
	backoffMax  time.Duration    // first window after a retryable one (WithBackoff)
}

// record remembers fe and wakes the waiters.
func (f *failures) record(fe *FetchError) {
	gen := f.held()
	f.mu.Lock()
	f.fail = fe
	f.gen = gen
	_, f.seq = f.sig.arm()
	f.mu.Unlock()
	f.sig.fire()
}

// adopt takes on a failure the fleet recorded in Redis, unless one is
// already remembered here, and the fleet's count of failed refreshes in a
// row, so the back-off grows whoever refreshes next.
func (f *failures) adopt(fe *FetchError, streak int32) {
	for cur := f.streak.Load(); streak > cur && !f.streak.CompareAndSwap(cur, streak); cur = f.streak.Load() {
	}
	f.mu.Lock()
	cur := f.fail
	f.mu.Unlock()
	if cur != nil && f.now().Before(cur.Until) {
		return // ours is still in its window, and carries the local cause
	}
	f.record(fe)
}

// limit is the longest window a failure heard from the fleet may impose
// here: a sender (or anyone who can write to Redis) cannot silence this
// replica longer than its own window would.
func (f *failures) limit(retryable bool) time.Duration {
	if retryable {
		return maxRetryWindow
	}
	return f.negativeTTL
}

// window is how long nobody calls the issuer after this failure: the
// negative TTL for a permanent error; for a retryable one, a back-off that
// starts at the retry cap (each refresh has already retried with backoff)
// and doubles with each refresh in a row that failed (so callers that keep asking
// do not turn an outage into a stream of calls), or the issuer's
// Retry-After if longer, capped at maxRetryWindow.
func (f *failures) window(fe *FetchError, err error) time.Duration {
	if !fe.Retryable {
		return f.negativeTTL
	}
	streak := f.streak.Add(1)
	d := jitter(min(maxRetryWindow, f.backoffMax<<min(streak-1, 16)))
	return min(maxRetryWindow, max(d, retryAfter(err)))
}

// clearBelow forgets the remembered failure once a token newer than the
// one held when it happened is installed: re-reading the token whose
// refresh failed is no reason to call the issuer again.
func (f *failures) clearBelow(gen int64) {
	f.mu.Lock()
	clear := f.fail != nil && gen > f.gen
	if clear {
		f.fail = nil
	}
	f.mu.Unlock()
	if clear {
		f.streak.Store(0)
	}
}

// clear forgets the remembered failure and the streak.
func (f *failures) clear() {
	f.mu.Lock()
	f.fail = nil
	f.mu.Unlock()
	f.streak.Store(0)
}

// since returns a failure recorded after the waiter armed at seq.
func (f *failures) since(seq uint64) *FetchError {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil && f.seq >= seq {
		return f.fail
	}
	return nil
}

// negative returns a remembered failure still in its window: no issuer
// call until it ends.
func (f *failures) negative() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fe := f.fail; fe != nil && !fe.Until.IsZero() && f.now().Before(fe.Until) {
		return fe
	}
	return nil
}

// backingOff is how long the remembered failure's window still runs.
func (f *failures) backingOff() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fe := f.fail; fe != nil && !fe.Until.IsZero() {
		return fe.Until.Sub(f.now())
	}
	return 0
}

// retryDelay is how long a refresh ahead that failed waits: the failure's
// window, else a jittered backoffMax.
func (f *failures) retryDelay() time.Duration {
	if d := f.backingOff(); d > 0 {
		return d
	}
	return jitter(f.backoffMax)
}
