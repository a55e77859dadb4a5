package testutil

import (
	"sync"
	"time"
)

// Clock is a clock the test moves by hand. Its timers fire when Advance
// passes their moment, each on its own goroutine as time.AfterFunc's do,
// so code on it runs its production timer path. It is safe for
// concurrent use.
type Clock struct {
	mu     sync.Mutex // guards t, timers and every Timer's at and active
	t      time.Time
	timers []*Timer
}

// NewClock returns a Clock that reads start until it is advanced.
func NewClock(start time.Time) *Clock { return &Clock{t: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock by d and fires the timers it passes.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	var due []func()
	for _, tm := range c.timers {
		if tm.active && !tm.at.After(c.t) {
			tm.active = false
			due = append(due, tm.f)
		}
	}
	c.mu.Unlock()
	for _, f := range due {
		go f()
	}
}

// AfterFunc arranges for f to be called on its own goroutine once Advance
// has moved the clock d past now, as time.AfterFunc does in real time.
func (c *Clock) AfterFunc(d time.Duration, f func()) *Timer {
	tm := &Timer{c: c, f: f}
	tm.Reset(d)
	c.mu.Lock()
	c.timers = append(c.timers, tm)
	c.mu.Unlock()
	return tm
}

// Timer is a timer of a Clock, with *time.Timer's Reset and Stop.
type Timer struct {
	c      *Clock
	f      func()
	at     time.Time // guarded by c.mu, as is active
	active bool
}

// Reset makes the timer fire d after the clock's now; it reports whether
// the timer was active.
func (tm *Timer) Reset(d time.Duration) bool {
	tm.c.mu.Lock()
	defer tm.c.mu.Unlock()
	was := tm.active
	tm.at, tm.active = tm.c.t.Add(d), true
	return was
}

// Stop keeps the timer from firing; it reports whether the timer was
// active.
func (tm *Timer) Stop() bool {
	tm.c.mu.Lock()
	defer tm.c.mu.Unlock()
	was := tm.active
	tm.active = false
	return was
}
