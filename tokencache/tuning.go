package tokencache

import "time"

// Tuning holds the cache's tuning knobs: timings and shares that the
// defaults already set for a fleet sharing a 60-minute token. Give it to
// WithTuning; a zero field keeps the default (or what an earlier
// WithTuning set), so Tuning{LockTTL: 20 * time.Second} changes the lock
// TTL alone. Where zero is a meaningful setting (no jitter, no skew, no
// negative cache), -1 asks for it. A value out of range makes New return a
// *TuningError naming the field.
type Tuning struct {
	// RefreshJitter is the share of a token's life over which replicas
	// spread their refresh-ahead moment, in (0, 0.5), so that one replica
	// goes first and the others pick up its token from its "refreshed"
	// event. Default 0.1 (six minutes of a 60-minute token); -1: no
	// jitter, every replica is due at the same moment.
	RefreshJitter float64

	// ExpirySkew is how long before the issuer's expiry a token stops
	// being served (and the key's TTL ends): it covers the clock offset
	// between issuer and writer, the request's transit and retries.
	// Default 30s, capped at a fifth of the token's lifetime; -1: no skew.
	ExpirySkew time.Duration

	// LockTTL is the lease of the refresh lock, at least 10ms. A watchdog
	// extends it while the issuer call runs, so it bounds only how long a
	// dead holder blocks the fleet. Lock operations are bounded by a third
	// of it. Default 10s.
	LockTTL time.Duration

	// RefreshTimeout bounds one refresh: its issuer calls, their retries
	// and waiting for another replica's refresh. Default 30s.
	RefreshTimeout time.Duration

	// L1MaxAge is how long the in-process copy is trusted before it is
	// re-read from Redis in the background. Default 0: the copy is
	// replaced or dropped by events, re-read after every re-subscription
	// and at its refresh-ahead moment, and never on age. A positive value
	// also catches a hand DEL with redis-cli within that time, at one read
	// per replica per period (30s costs 120 reads an hour).
	L1MaxAge time.Duration

	// WaitRecheck is how often a caller waiting for another replica's
	// refresh re-reads Redis when no event arrives (jittered ±25%): the
	// bound on a lost "refreshed" message. Default 1s.
	WaitRecheck time.Duration

	// NegativeTTL is how long a permanent issuer error (a wrong key,
	// access denied) is remembered and returned at once instead of
	// calling the issuer again. Default 10s; -1: no negative cache.
	NegativeTTL time.Duration

	// RetryAttempts is how many issuer calls one refresh makes for
	// retryable errors (5xx, 429, timeouts); 1 means no retry. Default 4.
	RetryAttempts int

	// RetryBase and RetryMax bound the capped exponential backoff (with
	// full jitter) between those calls; RetryMax may not be below
	// RetryBase. A Retry-After from the issuer is honoured up to RetryMax.
	// Defaults 200ms and 5s.
	RetryBase, RetryMax time.Duration

	// ProbeInterval is how long the events subscription may stay silent
	// before the cache probes it by publishing to its own channel, and
	// ProbeTimeout how long the probe may take to come back before the
	// cache subscribes again. Defaults 5s and 2s: a half-open
	// subscription is replaced within seconds, for about one PUBLISH per
	// quiet interval for the whole namespace. Whatever the interval, a
	// replica that finds in Redis a change it heard nothing about probes
	// at once, so a small fleet with long-lived tokens can set an hour and
	// have a dead subscription replaced at the next renewal instead.
	ProbeInterval, ProbeTimeout time.Duration
}

// WithTuning sets the tuning knobs t gives; its zero fields keep their
// defaults (see Tuning). Several WithTuning options apply in order, each
// changing only the fields it sets.
func WithTuning(t Tuning) Option {
	return func(c *config) error { return t.apply(c) }
}

// apply validates every field of t, then copies the set ones into c: an
// invalid Tuning changes nothing.
func (t Tuning) apply(c *config) error {
	next := *c
	if err := t.set(&next); err != nil {
		return err
	}
	*c = next
	return nil
}

// set copies t's set fields into c, or returns the first field out of
// range.
func (t Tuning) set(c *config) error {
	switch j := t.RefreshJitter; {
	case j == -1:
		c.refreshJitter = 0
	case j == 0:
	case j > 0 && j < 0.5:
		c.refreshJitter = j
	default:
		return &TuningError{Field: "RefreshJitter", Value: j, Reason: "is not in (0, 0.5) (-1: no jitter)"}
	}
	switch d := t.ExpirySkew; {
	case d == -1:
		c.skew = 0
	case d == 0:
	case d > 0:
		c.skew = d
	default:
		return &TuningError{Field: "ExpirySkew", Value: d, Reason: "is negative (-1: no skew)"}
	}
	switch d := t.LockTTL; {
	case d == 0:
	case d >= 10*time.Millisecond:
		c.lockTTL = d
	default:
		return &TuningError{Field: "LockTTL", Value: d, Reason: "is below 10ms"}
	}
	if err := positive(&c.refreshTimeout, t.RefreshTimeout, "RefreshTimeout"); err != nil {
		return err
	}
	switch d := t.L1MaxAge; {
	case d == 0:
	case d > 0:
		c.l1MaxAge = d
	default:
		return &TuningError{Field: "L1MaxAge", Value: d, Reason: "is negative"}
	}
	if err := positive(&c.waitRecheck, t.WaitRecheck, "WaitRecheck"); err != nil {
		return err
	}
	switch d := t.NegativeTTL; {
	case d == -1:
		c.negativeTTL = 0
	case d == 0:
	case d > 0:
		c.negativeTTL = d
	default:
		return &TuningError{Field: "NegativeTTL", Value: d, Reason: "is negative (-1: no negative cache)"}
	}
	switch n := t.RetryAttempts; {
	case n == 0:
	case n > 0:
		c.maxAttempts = n
	default:
		return &TuningError{Field: "RetryAttempts", Value: n, Reason: "is negative (1: no retry)"}
	}
	if err := positive(&c.backoffBase, t.RetryBase, "RetryBase"); err != nil {
		return err
	}
	if err := positive(&c.backoffMax, t.RetryMax, "RetryMax"); err != nil {
		return err
	}
	if c.backoffMax < c.backoffBase {
		return &TuningError{Field: "RetryMax", Value: c.backoffMax, Reason: "is below RetryBase " + c.backoffBase.String()}
	}
	if err := positive(&c.probeInterval, t.ProbeInterval, "ProbeInterval"); err != nil {
		return err
	}
	return positive(&c.probeTimeout, t.ProbeTimeout, "ProbeTimeout")
}

// positive sets *dst to d when d is positive, leaves it when d is zero,
// and refuses a negative d as field.
func positive(dst *time.Duration, d time.Duration, field string) error {
	switch {
	case d > 0:
		*dst = d
	case d < 0:
		return &TuningError{Field: field, Value: d, Reason: "is negative"}
	}
	return nil
}

// The options below set Tuning fields. They accept what they accepted
// before Tuning: a zero they refused is still refused, and
// WithRefreshJitter(0), WithExpirySkew(0) and WithNegativeTTL(0) turn the
// knob off, as -1 does in Tuning.

// WithRefreshJitter sets Tuning.RefreshJitter; 0 means no jitter.
//
// Deprecated: use WithTuning(Tuning{RefreshJitter: share}), with -1 for
// no jitter.
func WithRefreshJitter(share float64) Option {
	switch {
	case share == 0:
		share = -1
	case share < 0:
		return refuse("RefreshJitter", share, "is negative")
	}
	return WithTuning(Tuning{RefreshJitter: share})
}

// WithExpirySkew sets Tuning.ExpirySkew; 0 means no skew.
//
// Deprecated: use WithTuning(Tuning{ExpirySkew: d}), with -1 for no skew.
func WithExpirySkew(d time.Duration) Option {
	switch {
	case d == 0:
		d = -1
	case d < 0:
		return refuse("ExpirySkew", d, "is negative")
	}
	return WithTuning(Tuning{ExpirySkew: d})
}

// WithLockTTL sets Tuning.LockTTL.
//
// Deprecated: use WithTuning(Tuning{LockTTL: d}).
func WithLockTTL(d time.Duration) Option {
	if d == 0 {
		return refuse("LockTTL", d, "is below 10ms")
	}
	return WithTuning(Tuning{LockTTL: d})
}

// WithRefreshTimeout sets Tuning.RefreshTimeout.
//
// Deprecated: use WithTuning(Tuning{RefreshTimeout: d}).
func WithRefreshTimeout(d time.Duration) Option {
	if d == 0 {
		return refuse("RefreshTimeout", d, "is not positive")
	}
	return WithTuning(Tuning{RefreshTimeout: d})
}

// WithL1MaxAge sets Tuning.L1MaxAge; 0 is the default.
//
// Deprecated: use WithTuning(Tuning{L1MaxAge: d}).
func WithL1MaxAge(d time.Duration) Option {
	if d == 0 {
		return func(c *config) error { c.l1MaxAge = 0; return nil }
	}
	return WithTuning(Tuning{L1MaxAge: d})
}

// WithWaitRecheck sets Tuning.WaitRecheck.
//
// Deprecated: use WithTuning(Tuning{WaitRecheck: d}).
func WithWaitRecheck(d time.Duration) Option {
	if d == 0 {
		return refuse("WaitRecheck", d, "is not positive")
	}
	return WithTuning(Tuning{WaitRecheck: d})
}

// WithNegativeTTL sets Tuning.NegativeTTL; 0 disables the negative cache.
//
// Deprecated: use WithTuning(Tuning{NegativeTTL: d}), with -1 for no
// negative cache.
func WithNegativeTTL(d time.Duration) Option {
	switch {
	case d == 0:
		d = -1
	case d < 0:
		return refuse("NegativeTTL", d, "is negative")
	}
	return WithTuning(Tuning{NegativeTTL: d})
}

// WithRetry sets Tuning.RetryAttempts, RetryBase and RetryMax.
//
// Deprecated: use WithTuning(Tuning{RetryAttempts: attempts, RetryBase:
// base, RetryMax: max}).
func WithRetry(attempts int, base, max time.Duration) Option {
	switch {
	case attempts == 0:
		return refuse("RetryAttempts", attempts, "is not positive")
	case base == 0:
		return refuse("RetryBase", base, "is not positive")
	case max == 0:
		return refuse("RetryMax", max, "is not positive")
	}
	return WithTuning(Tuning{RetryAttempts: attempts, RetryBase: base, RetryMax: max})
}

// WithSubscriptionProbe sets Tuning.ProbeInterval and ProbeTimeout.
//
// Deprecated: use WithTuning(Tuning{ProbeInterval: interval, ProbeTimeout:
// timeout}).
func WithSubscriptionProbe(interval, timeout time.Duration) Option {
	switch {
	case interval == 0:
		return refuse("ProbeInterval", interval, "is not positive")
	case timeout == 0:
		return refuse("ProbeTimeout", timeout, "is not positive")
	}
	return WithTuning(Tuning{ProbeInterval: interval, ProbeTimeout: timeout})
}

// refuse is an option that fails with a TuningError: a deprecated
// option's answer to a value it always refused.
func refuse(field string, v any, reason string) Option {
	return func(*config) error { return &TuningError{Field: field, Value: v, Reason: reason} }
}
