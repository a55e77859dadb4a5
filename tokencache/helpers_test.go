package tokencache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testutil"
)

// fakeFetcher is a hand-written issuer: it counts calls, mints unique
// tokens with a fixed lifetime, and can be slowed, blocked or failed.
type fakeFetcher struct {
	calls atomic.Int64
	life  time.Duration
	now   func() time.Time
	id    string

	mu    sync.Mutex // guards delay, gate, errs, and life once the test runs
	delay time.Duration
	gate  chan struct{} // if not nil, Fetch waits for it
	errs  []error       // returned by the next calls, in order
}

var _ Fetcher = (*fakeFetcher)(nil)
var _ Identifier = (*fakeFetcher)(nil)

func newFakeFetcher(life time.Duration) *fakeFetcher {
	return &fakeFetcher{life: life, now: time.Now, id: "test-credential"}
}

func (f *fakeFetcher) Identity() string { return f.id }

func (f *fakeFetcher) Fetch(ctx context.Context) (Token, error) {
	n := f.calls.Add(1)
	f.mu.Lock()
	delay, gate, life := f.delay, f.gate, f.life
	var err error
	if len(f.errs) > 0 {
		err, f.errs = f.errs[0], f.errs[1:]
	}
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return Token{}, ctx.Err()
		}
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return Token{}, ctx.Err()
		}
	}
	if err != nil {
		return Token{}, err
	}
	return Token{AccessToken: fmt.Sprintf("secret-token-%d-%d", n, time.Now().UnixNano()), TokenType: "Bearer", Expiry: f.now().Add(life)}, nil
}

func (f *fakeFetcher) setGate(ch chan struct{}) { f.mu.Lock(); f.gate = ch; f.mu.Unlock() }
func (f *fakeFetcher) setDelay(d time.Duration) { f.mu.Lock(); f.delay = d; f.mu.Unlock() }
func (f *fakeFetcher) setLife(d time.Duration)  { f.mu.Lock(); f.life = d; f.mu.Unlock() }
func (f *fakeFetcher) failNext(errs ...error) {
	f.mu.Lock()
	f.errs = append(f.errs, errs...)
	f.mu.Unlock()
}

// issuerErr is an issuer error with the optional methods the cache reads.
type issuerErr struct {
	code      string
	retryable bool
	after     time.Duration
}

func (e *issuerErr) Error() string             { return "issuer says " + e.code }
func (e *issuerErr) Retryable() bool           { return e.retryable }
func (e *issuerErr) ErrorCode() string         { return e.code }
func (e *issuerErr) RetryAfter() time.Duration { return e.after }

// fakeClock is the shared hand-moved clock (testutil.Clock) seen through
// the cache's clock interface, so a cache on it runs the production timer
// path.
type fakeClock struct{ *testutil.Clock }

func newFakeClock() *fakeClock { return newFakeClockAt(time.Now()) }

func newFakeClockAt(start time.Time) *fakeClock { return &fakeClock{testutil.NewClock(start)} }

func (c *fakeClock) AfterFunc(d time.Duration, f func()) timer { return c.Clock.AfterFunc(d, f) }

// Offset is a clock that reads off ahead of c (behind if negative) and
// shares its timers: replicas whose clocks disagree, moved together.
func (c *fakeClock) Offset(off time.Duration) clock { return offsetOf{c, off} }

type offsetOf struct {
	*fakeClock
	off time.Duration
}

func (o offsetOf) Now() time.Time { return o.fakeClock.Now().Add(o.off) }

// offsetClock is the system clock read off ahead (behind if negative),
// with the system's timers: a replica whose clock is wrong.
type offsetClock time.Duration

func (o offsetClock) Now() time.Time { return time.Now().Add(time.Duration(o)) }
func (offsetClock) AfterFunc(d time.Duration, f func()) timer {
	return time.AfterFunc(d, f)
}

// withClock runs the cache on cl instead of the system clock.
func withClock(cl clock) Option {
	return func(c *config) error { c.clock = cl; return nil }
}

// backend is a Redis for a test: miniredis (fast, clock control) or a real
// redis-server (the real thing).
type backend struct {
	name string
	new  func(t *testing.T) (redis.UniversalClient, *miniredis.Miniredis)
}

func miniBackend(t testing.TB) (redis.UniversalClient, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return c, mr
}

func realBackend(t *testing.T) (redis.UniversalClient, *miniredis.Miniredis) {
	t.Helper()
	s := redistest.Start(t)
	return s.Client(t), nil
}

var backends = []backend{
	{"miniredis", func(t *testing.T) (redis.UniversalClient, *miniredis.Miniredis) { return miniBackend(t) }},
	{"redis-server", realBackend},
}

// forEachBackend runs f against miniredis and a real redis-server.
func forEachBackend(t *testing.T, f func(t *testing.T, rdb redis.UniversalClient, mr *miniredis.Miniredis)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			rdb, mr := b.new(t)
			f(t, rdb, mr)
		})
	}
}

func newCache(t testing.TB, rdb redis.UniversalClient, f Fetcher, opts ...Option) *Cache {
	t.Helper()
	c, err := New(rdb, f, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// fastOpts keep the waits of a test short without changing what is tested.
func fastOpts(extra ...Option) []Option {
	return append([]Option{
		WithTuning(Tuning{
			LockTTL:        2 * time.Second,
			WaitRecheck:    100 * time.Millisecond,
			RefreshTimeout: 10 * time.Second,
			RetryAttempts:  3,
			RetryBase:      5 * time.Millisecond,
			RetryMax:       20 * time.Millisecond,
		}),
	}, extra...)
}

// eventually and ctxT are the shared helpers under the names this
// package's tests use.
var (
	eventually = testutil.Eventually
	ctxT       = testutil.Context
)

func isFetchError(err error, code string, remote bool) bool {
	var fe *FetchError
	return errors.As(err, &fe) && fe.Code == code && fe.Remote == remote
}

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(replicaMain())
	}
	os.Exit(m.Run())
}

// total sums one counter of Stats over caches.
func total(caches []*Cache, counter func(Stats) uint64) (n uint64) {
	for _, c := range caches {
		n += counter(c.Stats())
	}
	return n
}

// clientToken is c.User(id) then Token.
func clientToken(c *Cache, ctx context.Context, id string) (Token, error) {
	u, err := c.User(id)
	if err != nil {
		return Token{}, err
	}
	return u.Token(ctx)
}
