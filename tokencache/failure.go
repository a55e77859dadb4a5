package tokencache

import (
	"time"
)

// This file is the failure memory of one token: the last refresh that
// failed (here, or anywhere in the fleet through its event or failure
// key), and the token's one back-off (see failStreak): the count of failures
// in a row and the window it sets, in which nobody calls the issuer again
// (or, for the API's rejections, Transport holds 401s). Both are part of
// the token's one state, under memory's mutex. Waiters learn of a failure
// through the entry's signal.

// maxRetryWindow caps how long the fleet waits after failed refreshes of
// a retryable kind before calling the issuer again.
const maxRetryWindow = 30 * time.Second

// failState is the last failed refresh of one token; guarded by memory.mu.
type failState struct {
	fail *FetchError
	seq  uint64 // the signal's sequence when fail was recorded
	gen  int64  // generation held in memory when fail happened
}

// failStreak is the token's one window machine: the failures in a row of one
// kind, refreshes whose issuer call failed (retryable ones), or, if api,
// tokens fetched after an invalidation that the API rejected before any
// success (see evidence.go), and, for the API's, the end of the window in
// which 401s are held (an issuer failure's window is its FetchError's
// Until). A failure of the other kind starts the count again. Guarded by
// memory.mu.
type failStreak struct {
	n     int32
	api   bool
	until mono
}

// grow counts one more failure of the kind api at now and returns the
// window it sets: base doubled for each failure in a row before it,
// capped at limit (jittered by the caller where replicas must not act in
// step).
func (b *failStreak) grow(api bool, base, limit time.Duration) time.Duration {
	if b.api != api {
		*b = failStreak{api: api}
	}
	b.n++
	return doubled(base, limit, b.n)
}

// adopt takes on the fleet's count n of failures of the kind api in a row,
// if it is longer than ours, so the window grows whoever fails next.
func (b *failStreak) adopt(api bool, n int32) {
	if b.api != api {
		*b = failStreak{api: api}
	}
	b.n = max(b.n, n)
}

// end ends the streak if it counts failures of the kind api.
func (b *failStreak) end(api bool) {
	if b.api == api {
		*b = failStreak{}
	}
}

// doubled is base doubled for each of n-1 in a row, capped at limit.
func doubled(base, limit time.Duration, n int32) time.Duration {
	return min(limit, base<<min(max(n-1, 0), 16))
}

// failures is the failure memory of one token: its methods read and change
// the memory's failState and failStreak under memory.mu.
type failures struct {
	m           *memory
	sig         *signal          // fired when a failure is recorded
	now         func() time.Time // the cache's clock
	negativeTTL time.Duration    // window after a permanent failure (Tuning.NegativeTTL)
	backoffMax  time.Duration    // first window after a retryable one (Tuning.RetryMax)
}

// record remembers fe and wakes the waiters.
func (f *failures) record(fe *FetchError) {
	m := f.m
	m.mu.Lock()
	f.recordLocked(fe)
	m.mu.Unlock()
	f.sig.fire()
}

// recordLocked is record with memory.mu held, without the wake-up.
func (f *failures) recordLocked(fe *FetchError) {
	m := f.m
	m.fail.fail = fe
	m.fail.gen = 0
	if s := m.l1.Load(); s != nil {
		m.fail.gen = s.gen
	}
	_, m.fail.seq = f.sig.arm()
}

// adopt takes on a failure the fleet recorded in Redis, unless one is
// already remembered here, and the fleet's count of failed refreshes in a
// row, so the back-off grows whoever refreshes next.
func (f *failures) adopt(fe *FetchError, streak int32) {
	m := f.m
	m.mu.Lock()
	m.back.adopt(false, streak)
	if cur := m.fail.fail; cur != nil && f.now().Before(cur.Until) {
		m.mu.Unlock()
		return // ours is still in its window, and carries the local cause
	}
	f.recordLocked(fe)
	m.mu.Unlock()
	f.sig.fire()
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

// window is how long nobody calls the issuer after this failure, and the
// count of failures in a row it makes: the negative TTL for a permanent
// error; for a retryable one, a back-off that starts at the retry cap
// (each refresh has already retried with backoff) and doubles with each
// refresh in a row that failed (so callers that keep asking do not turn an
// outage into a stream of calls), or the issuer's Retry-After if longer,
// capped at maxRetryWindow.
func (f *failures) window(fe *FetchError, err error) (time.Duration, int32) {
	m := f.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if !fe.Retryable {
		return f.negativeTTL, m.back.n
	}
	d := jitter(m.back.grow(false, f.backoffMax, maxRetryWindow))
	return min(maxRetryWindow, max(d, retryAfter(err))), m.back.n
}

// clearBelowLocked forgets the remembered failure once a token newer than
// the one held when it happened is installed (memory.mu held): re-reading
// the token whose refresh failed is no reason to call the issuer again.
// The refreshes' streak ends with it; the API's does not (its tokens are
// judged by the API, not by being stored: see memory.acceptedBy).
func (m *memory) clearBelowLocked(gen int64) {
	if m.fail.fail != nil && gen > m.fail.gen {
		m.fail.fail = nil
		m.back.end(false)
	}
}

// clear forgets the remembered failure and the refreshes' streak.
func (f *failures) clear() {
	m := f.m
	m.mu.Lock()
	m.fail.fail = nil
	m.back.end(false)
	m.mu.Unlock()
}

// streak is the count of refreshes in a row that failed (0 while the
// streak counts the API's rejections instead).
func (f *failures) streak() int32 {
	m := f.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.back.api {
		return 0
	}
	return m.back.n
}

// since returns a failure recorded after the waiter armed at seq.
func (f *failures) since(seq uint64) *FetchError {
	m := f.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail.fail != nil && m.fail.seq >= seq {
		return m.fail.fail
	}
	return nil
}

// negative returns a remembered failure still in its window: no issuer
// call until it ends.
func (f *failures) negative() error {
	m := f.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if fe := m.fail.fail; fe != nil && !fe.Until.IsZero() && f.now().Before(fe.Until) {
		return fe
	}
	return nil
}

// backingOff is how long the remembered failure's window still runs.
func (f *failures) backingOff() time.Duration {
	m := f.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if fe := m.fail.fail; fe != nil && !fe.Until.IsZero() {
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
