package tokencache

import "time"

// clock is the cache's time: the wall clock that judges expiries and the
// timers that start background work at a token's moment. Production uses
// the system's; tests substitute one they move by hand (or offset), and
// the cache runs the same timer path on it.
type clock interface {
	Now() time.Time
	// AfterFunc calls f on its own goroutine once d has passed, as
	// time.AfterFunc does.
	AfterFunc(d time.Duration, f func()) timer
}

// timer is what AfterFunc returns: *time.Timer's Reset and Stop.
type timer interface {
	Reset(d time.Duration) bool
	Stop() bool
}

// systemClock is time.Now and time.AfterFunc.
type systemClock struct{}

func (systemClock) Now() time.Time                            { return time.Now() }
func (systemClock) AfterFunc(d time.Duration, f func()) timer { return time.AfterFunc(d, f) }
